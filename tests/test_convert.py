"""The PyTorch converter against the official-checkpoint fixtures."""

import argparse
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compact_flax
from compact_flax import convert
from compact_flax import merge

torch = pytest.importorskip('torch')
NAMES = ['cct_2_3x2_32', 'cct_7_3x1_32_sine', 'cvt_2_4_32', 'vit_2_4_32']


def _rel(a, b):
  return float(np.linalg.norm(np.asarray(a, np.float32) - b) / np.linalg.norm(b))


def _fixture(d, name):
  z = np.load(d / f'{name}.npz')
  return d / f'{name}.pth', z['input_nchw'].transpose(0, 2, 3, 1), z['logits']


@pytest.mark.parametrize('name', NAMES)
def test_parity_float32_and_bfloat16(fixtures_dir, name):
  path, x, ref = _fixture(fixtures_dir, name)
  model, variables = convert.load_torch_checkpoint(str(path), name)
  out = jax.jit(model.apply)(variables, x)
  assert _rel(out, ref) <= 1e-5
  bf16 = model.clone(dtype=jnp.bfloat16).apply(variables, x)
  assert bf16.dtype == jnp.bfloat16
  assert _rel(bf16, np.asarray(out)) <= 2e-2
  # Parameter count: the fixture's count includes a stored sine table, ours never does.
  count = sum(p.size for p in jax.tree.leaves(variables['params']))
  spec = json.loads((fixtures_dir / f'{name}.json').read_text())
  table = model.num_tokens() * model.embedding_dim if model.positional_embedding == 'sine' else 0
  assert count + table == spec['num_params']


def test_timm_checkpoint_formats(fixtures_dir, tmp_path):
  path, x, ref = _fixture(fixtures_dir, 'cct_2_3x2_32')
  sd = torch.load(path, weights_only=True)
  ema = {k: v * 0.5 for k, v in sd.items()}
  # As timm's CheckpointSaver writes it: the run's argparse arguments and the optimizer come along.
  ckpt = {'epoch': 3, 'arch': 'cct_2_3x2_32', 'version': 2, 'metric': 91.5,
          'state_dict': {'module.' + k: v for k, v in sd.items()},
          'state_dict_ema': {'module.' + k: v for k, v in ema.items()},
          'optimizer': {'state': {0: {'step': torch.tensor(3.0), 'exp_avg': torch.zeros(2)}},
                        'param_groups': [{'lr': 5e-4, 'betas': (0.9, 0.999), 'params': [0]}]},
          'args': argparse.Namespace(model='cct_2_3x2_32', lr=5e-4, aa='rand-m9-mstd0.5-inc1',
                                     mixup=0.8, epochs=300, input_size=None)}
  torch.save(ckpt, tmp_path / 'timm.pth.tar')
  model, variables = convert.load_torch_checkpoint(str(tmp_path / 'timm.pth.tar'), 'cct_2_3x2_32')
  assert _rel(model.apply(variables, x), ref) <= 1e-5
  _, ema_vars = convert.load_torch_checkpoint(str(tmp_path / 'timm.pth.tar'), 'cct_2_3x2_32',
                                              use_ema=True)
  np.testing.assert_allclose(ema_vars['params']['classifier']['fc']['bias'],
                             variables['params']['classifier']['fc']['bias'] * 0.5, rtol=1e-6)


def test_resize_matches_torch_interpolate():
  from torch.nn import functional as F
  rng = np.random.default_rng(0)
  for g, new, prefix in ((8, (16, 16), 0), (16, (8, 8), 0), (8, (12, 20), 1), (14, (24, 24), 0)):
    pe = rng.normal(size=(1, prefix + g * g, 5)).astype(np.float32)
    grid = torch.from_numpy(pe[0, prefix:]).reshape(1, g, g, 5).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=new, mode='bilinear', align_corners=False)
    ref = ref.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], 5).numpy()
    out = merge.resize_positional_embedding(pe, new, num_prefix=prefix)
    np.testing.assert_array_equal(out[:, :prefix], pe[:, :prefix])
    np.testing.assert_allclose(out[:, prefix:], ref, atol=1e-6)


def test_new_resolution_and_class_count(fixtures_dir):
  path, _, _ = _fixture(fixtures_dir, 'vit_2_4_32')
  model, variables = convert.load_torch_checkpoint(str(path), 'vit_2_4_32', img_size=48,
                                                   num_classes=7)
  sd = convert.read_state_dict(str(path))
  params = variables['params']['classifier']
  assert params['positional_emb'].shape == (1, 1 + 12 * 12, 128)
  np.testing.assert_array_equal(params['positional_emb'][:, 0], sd[convert.PE_KEY][:, 0])
  assert params['fc']['kernel'].shape == (128, 7)
  np.testing.assert_array_equal(params['fc']['bias'], 0)  # fresh init, not the checkpoint's
  np.testing.assert_array_equal(params['norm']['scale'], sd['classifier.norm.weight'])
  assert model.apply(variables, jnp.ones((2, 48, 48, 3))).shape == (2, 7)
  # A sine table is regenerated at the new resolution, not resized.
  path, _, _ = _fixture(fixtures_dir, 'cct_7_3x1_32_sine')
  model, variables = convert.load_torch_checkpoint(str(path), 'cct_7_3x1_32_sine', img_size=64)
  assert model.positional_embedding == 'sine' and 'positional_emb' not in variables['params'][
      'classifier']
  assert model.apply(variables, jnp.ones((1, 64, 64, 3))).shape == (1, 10)


def test_sine_name_with_trained_table_keeps_the_stored_table(fixtures_dir, tmp_path):
  path, x, ref = _fixture(fixtures_dir, 'cct_2_3x2_32')  # a learnable table
  model, variables = convert.load_torch_checkpoint(str(path), 'cct_2_3x2_32_sine')
  assert model.positional_embedding == 'learnable'
  assert _rel(model.apply(variables, x), ref) <= 1e-5


def test_errors_name_the_problem(fixtures_dir, tmp_path):
  path, _, _ = _fixture(fixtures_dir, 'cct_2_3x2_32')
  with pytest.raises(convert.CheckpointError) as e:
    convert.load_torch_checkpoint(str(path), 'cct_7_3x1_32')
  assert 'tokenizer.conv_layers.0.0.weight: checkpoint (64, 3, 3, 3), model (256, 3, 3, 3)' in str(
      e.value)
  assert 'Variants that fit the file: cct_2_3x2_32, cct_2_3x2_32_sine' in str(e.value)
  sd = convert.read_state_dict(str(path))
  sd['classifier.fc.weight'] = np.zeros((100, 128), np.float32)
  sd['classifier.fc.bias'] = np.zeros((100,), np.float32)
  with pytest.raises(convert.CheckpointError, match=r'classifier.fc.weight: checkpoint \(100, 128\)'):
    convert.convert_state_dict(sd, 'cct_2_3x2_32')  # a class count must be asked for, not guessed
  sd = torch.load(path, weights_only=True)
  extra = dict(sd, **{'classifier.extra.weight': torch.zeros(3)})
  torch.save(extra, tmp_path / 'extra.pth')
  with pytest.raises(convert.CheckpointError, match=r'Not in the model \(1\): classifier.extra'):
    convert.load_torch_checkpoint(str(tmp_path / 'extra.pth'), 'cct_2_3x2_32')
  del sd['classifier.norm.bias']
  torch.save(sd, tmp_path / 'missing.pth')
  with pytest.raises(convert.CheckpointError, match='Missing from the checkpoint.*norm/bias'):
    convert.load_torch_checkpoint(str(tmp_path / 'missing.pth'), 'cct_2_3x2_32')
  (tmp_path / 'junk.pth').write_bytes(b'not a checkpoint')
  with pytest.raises(convert.CheckpointError, match='not a PyTorch checkpoint'):
    convert.load_torch_checkpoint(str(tmp_path / 'junk.pth'), 'cct_2_3x2_32')


def test_missing_torch_says_how_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, 'torch', None)
  with pytest.raises(ImportError, match='pip install'):
    convert.read_state_dict('x.pth')


def test_command_line_round_trip(fixtures_dir, tmp_path):
  path, x, ref = _fixture(fixtures_dir, 'cvt_2_4_32')
  out = tmp_path / 'converted'
  cmd = [sys.executable, 'convert_torch_weights.py', '--model', 'cvt_2_4_32', '--checkpoint',
         str(path), '--output', str(out)]
  run = subprocess.run(cmd, capture_output=True, text=True, check=False)
  assert run.returncode == 0, run.stderr
  model, variables = compact_flax.load_model(str(out))
  assert _rel(model.apply(variables, x), ref) <= 1e-5
  # A second run refuses to overwrite; a wrong model writes nothing.
  assert subprocess.run(cmd, capture_output=True, check=False).returncode == 1
  bad = tmp_path / 'bad'
  run = subprocess.run(cmd[:3] + ['cvt_7_4_32'] + cmd[4:6] + ['--output', str(bad)],
                       capture_output=True, text=True, check=False)
  assert run.returncode == 1 and 'Shape mismatch' in run.stderr
  assert not bad.exists()


@pytest.mark.parametrize('name', ['cct_14_7x2_224', 'cct_7_3x1_32_c100', 'cct_4_3x2_32_sine'])
def test_parity_with_the_authors_vit_pytorch_port(name):
  """Variants and resolutions beyond the fixtures: vit-pytorch's CCT (same layer names as the
  official code) with perturbed weights, converted and compared logit by logit."""
  import importlib.util
  found = importlib.util.find_spec('vit_pytorch')
  if found is None:
    pytest.skip('vit-pytorch not installed (pip install --no-deps vit-pytorch einops)')
  spec = importlib.util.spec_from_file_location(
      'vit_pytorch_cct', found.submodule_search_locations[0] + '/cct.py')
  cct = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(cct)
  _, kw = compact_flax.models.model_kwargs(name)
  torch.manual_seed(0)
  peer = cct.CCT(**{k: kw[k] for k in ('img_size', 'embedding_dim', 'n_conv_layers', 'kernel_size',
                                       'stride', 'padding', 'num_layers', 'num_heads', 'mlp_ratio',
                                       'num_classes', 'positional_embedding')}).eval()
  with torch.no_grad():
    for p in peer.parameters():
      p.add_(torch.randn_like(p) * 0.05)
    x = torch.randn(2, 3, kw['img_size'], kw['img_size'])
    ref = peer(x).numpy()
  sd = {k: v.numpy() for k, v in peer.state_dict().items()}
  model, variables = convert.convert_state_dict(sd, name)
  assert _rel(model.apply(variables, x.numpy().transpose(0, 2, 3, 1)), ref) <= 1e-5
