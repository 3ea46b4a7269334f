"""The text models: official parity, the README's parameter counts, and what a mask guarantees."""

import json
import subprocess
import sys

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compact_flax
from compact_flax import convert
from compact_flax import merge
from compact_flax.transformer import sinusoidal_embedding as sinusoid

TEXT_FIXTURES = ['text_cct_2_k1', 'text_cct_2_k4', 'text_cvt_2', 'text_vit_2']


def _load_fixture(d, name):
  spec = json.loads((d / f'{name}.json').read_text())
  ref = dict(np.load(d / f'{name}.npz'))
  kwargs = {k: v for k, v in spec['kwargs'].items() if k not in ('vocab_size', 'num_classes')}
  model, variables = convert.load_torch_checkpoint(str(d / f'{name}.pth'), spec['factory'],
                                                   **kwargs)
  return model, variables, ref


@pytest.mark.parametrize('name', TEXT_FIXTURES)
def test_official_parity(text_fixtures_dir, name):
  pytest.importorskip('torch')
  model, variables, ref = _load_fixture(text_fixtures_dir, name)
  assert (model.vocab_size, model.num_classes) == (1000, 4)  # read from the file
  ids, mask = ref['input_ids'], ref['input_mask']
  np.testing.assert_allclose(model.apply(variables, ids), ref['logits_nomask'], atol=1e-5)
  # The official masked forward (its two smallest fixes), which pools over padded tokens too.
  official = model.clone(mask_pooling=False)
  np.testing.assert_allclose(official.apply(variables, ids, mask=mask), ref['logits_mask'],
                             atol=1e-5)
  if 'inter/tokenizer_mask' in ref:
    _, inter = official.apply(variables, ids, mask=mask, capture_intermediates=True)
    tokens, token_mask = inter['intermediates']['tokenizer']['__call__'][0]
    np.testing.assert_array_equal(token_mask, ref['inter/tokenizer_mask'].astype(bool))
    np.testing.assert_allclose(tokens, ref['inter/tokenizer_out_masked'], atol=1e-5)


def test_converter_cli_reads_a_text_checkpoint(text_fixtures_dir, tmp_path):
  pytest.importorskip('torch')
  out = tmp_path / 'converted'
  proc = subprocess.run([sys.executable, 'convert_torch_weights.py', '--model', 'text_cct_2',
                         '--checkpoint', str(text_fixtures_dir / 'text_cct_2_k1.pth'),
                         '--output', str(out)], capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr
  model, variables = compact_flax.load_model(str(out))
  ref = np.load(text_fixtures_dir / 'text_cct_2_k1.npz')
  assert model.kernel_size == 1
  np.testing.assert_allclose(model.apply(variables, ref['input_ids']), ref['logits_nomask'],
                             atol=1e-5)


# nlp/README.md's `# Params`: trainable, the word embedding frozen, AG News's 4 classes.
README_PARAMS = {('text_cct_2', 1): 237_701, ('text_cct_2', 2): 276_101, ('text_cct_2', 4): 352_901,
                 ('text_cct_4', 1): 436_101, ('text_cct_4', 2): 474_501, ('text_cct_4', 4): 551_301,
                 ('text_cct_6', 1): 3_236_613, ('text_cct_6', 2): 3_313_413,
                 ('text_cct_6', 4): 3_467_013}


@pytest.mark.parametrize('name,kernel', sorted(README_PARAMS))
def test_parameter_counts_match_the_official_table(name, kernel):
  model = compact_flax.create_model(name, kernel_size=kernel, vocab_size=100)
  params = merge.init_variables(model, abstract=True)['params']
  count = sum(int(np.prod(p.shape)) for k, p in flax.traverse_util.flatten_dict(params).items()
              if k[0] != 'embedder')
  assert count == README_PARAMS[name, kernel]


MASKED = ['text_cct_2', 'text_cvt_2', 'text_vit_2', 'text_transformer_2']


def _random_model(name, **kw):
  model = compact_flax.create_model(name, vocab_size=50, seq_len=32, num_classes=3,
                                    word_embedding_dim=16, embedding_dim=32, **kw)
  return model, merge.init_variables(model, seed=1)


@pytest.mark.parametrize('name', MASKED)
@pytest.mark.parametrize('kernel', [1, 2, 4])
def test_padding_changes_nothing(name, kernel):
  if kernel != 4 and name != 'text_cct_2':
    pytest.skip('the kernel is a CCT argument')
  model, variables = _random_model(name, **({'kernel_size': kernel} if kernel != 4 else {}))
  rng = np.random.default_rng(0)
  words = rng.integers(2, 50, size=(3, 32))
  lengths = np.array([13, 7, 24])
  valid = np.arange(32)[None] < lengths[:, None]
  apply = jax.jit(model.apply)
  ref = apply(variables, np.where(valid, words, 1), mask=valid)
  # Garbage (not the pad id) at the padded positions.
  noisy = apply(variables, np.where(valid, words, rng.integers(0, 50, size=(3, 32))), mask=valid)
  np.testing.assert_allclose(noisy, ref, atol=1e-5)
  # Padded to 25 (one past the longest) instead of 32.
  short = apply(variables, np.where(valid, words, 1)[:, :25], mask=valid[:, :25])
  np.testing.assert_allclose(short, ref, atol=1e-5)
  # The shortest row on its own, not padded at all, with and without its mask.
  alone = apply(variables, words[1:2, :7], mask=np.ones((1, 7), bool))
  np.testing.assert_allclose(alone[0], ref[1], atol=1e-5)
  np.testing.assert_allclose(apply(variables, words[1:2, :7])[0], ref[1], atol=1e-5)


def test_empty_and_too_long_inputs():
  model, variables = _random_model('text_cct_2')
  out = model.apply(variables, np.ones((2, 32), np.int32), mask=np.zeros((2, 32), bool))
  assert np.isfinite(np.asarray(out)).all()
  with pytest.raises(ValueError, match='at most 32'):
    model.apply(variables, np.ones((1, 33), np.int32))
  with pytest.raises(ValueError, match='mask has shape'):
    model.apply(variables, np.ones((1, 8), np.int32), mask=np.ones((1, 9), bool))
  with pytest.raises(ValueError, match='word ids'):
    model.apply(variables, np.ones((1, 8), np.float32))


def test_shapes_and_dtypes():
  model, variables = _random_model('text_vit_2', dtype=jnp.bfloat16)
  ids = jnp.ones((2, 30), jnp.int32)
  logits = model.apply(variables, ids, mask=ids > 0, train=True,
                       rngs={'dropout': jax.random.key(0)})
  chex.assert_shape(logits, (2, 3))
  chex.assert_type(logits, jnp.bfloat16)
  for leaf in jax.tree.leaves(variables):
    chex.assert_type(leaf, jnp.float32)


def test_registry_and_close_names():
  names = compact_flax.list_models()
  for family in ('cct', 'cvt', 'vit', 'transformer'):
    for depth in (2, 4, 6):
      assert f'text_{family}_{depth}' in names
  with pytest.raises(ValueError, match='text_cct_2'):
    compact_flax.create_model('text_cct2')
  model = compact_flax.create_model('text_cct_6', kernel_size=1)  # stride and padding follow
  assert (model.stride, model.padding) == (1, 1)


def _official_layout(params, pe_rows=None):
  """Our params back in the official text state-dict layout (the converter's inverse), with the
  official table's leading padding row."""
  out = {}
  for path, value in flax.traverse_util.flatten_dict(params, sep='/').items():
    v = np.asarray(value)
    parts = path.split('/')
    if path == 'embedder/embeddings/embedding':
      out['embedder.embeddings.weight'] = v
    elif parts[0] == 'tokenizer':
      out['tokenizer.conv_layers.0.weight'] = v.transpose(2, 0, 1)[:, None]
    else:
      name = '.'.join(p.replace('blocks_', 'blocks.') for p in parts[1:-1])
      leaf = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias'}.get(parts[-1], parts[-1])
      key = f'classifier.{name}.{leaf}' if name else f'classifier.{leaf}'
      out[key] = v.T if parts[-1] == 'kernel' else v
  if pe_rows is not None:
    out['classifier.positional_emb'] = pe_rows
  return out


@pytest.mark.parametrize('name,kwargs', [('text_transformer_2', {}),
                                         ('text_cct_6', {'kernel_size': 1})])
def test_official_layout_of_other_variants_converts(name, kwargs):
  model = compact_flax.create_model(name, vocab_size=40, num_classes=6, seq_len=64, **kwargs)
  variables = merge.init_variables(model, seed=2)
  tokens = model.num_tokens() + (0 if model.seq_pool else 1)
  table = np.concatenate([np.zeros((1, 1, model.embedding_dim), np.float32),
                          np.asarray(sinusoid(tokens, model.embedding_dim))], axis=1)
  sd = _official_layout(variables['params'], table)
  converted, cvars = convert.convert_state_dict(sd, name)
  assert (converted.seq_len, converted.vocab_size, converted.num_classes) == (64, 40, 6)
  assert getattr(converted, 'kernel_size', 1) == kwargs.get('kernel_size', 1)
  ids = np.random.default_rng(0).integers(0, 40, (2, 64))
  np.testing.assert_array_equal(converted.apply(cvars, ids), model.apply(variables, ids))
