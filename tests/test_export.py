"""Export from a digits training workdir: the jax and TFLite formats against the Flax model, int8
agreement on real data, one-line errors; and the NNX face (equal logits, an optimizer step)."""

import contextlib
import io
import json

import jax
import numpy as np
import optax
import pytest
from flax import nnx

import compact_flax
from compact_flax import data
from compact_flax import export
from compact_flax import merge
from compact_flax import nnx_models
from compact_flax import train
from configs import digits_cct


@pytest.fixture(scope='module')
def digits_workdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('digits')
  config = digits_cct.get_config()
  config.num_epochs, config.checkpoint_async = 3, False
  with contextlib.redirect_stdout(io.StringIO()):
    train.train_and_evaluate(config, str(workdir))
  return str(workdir)


def _rel(a, b):
  return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


def _run(*argv):
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = export.main(list(argv))
  return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize('fmt', ['jax', 'tflite'])
def test_export_matches_flax_at_batch_1_and_3(digits_workdir, tmp_path, fmt):
  if fmt == 'tflite':
    pytest.importorskip('tensorflow')
  out = str(tmp_path / f'model.{fmt}')
  code, stdout, stderr = _run('--checkpoint', digits_workdir, '--format', fmt, '--output', out)
  assert code == 0, stderr
  assert 'Wrote' in stdout
  meta = json.load(open(out + '.json'))
  assert meta['img_size'] == [8, 8] and meta['class_names'] == [str(i) for i in range(10)]
  model, variables = compact_flax.load_model(digits_workdir)
  images = data.digits().eval_inputs['image']
  blob = open(out, 'rb').read()
  for batch in (1, 3):
    x = images[:batch]
    ref = np.asarray(model.apply(variables, x))
    got = (jax.export.deserialize(blob).call(x) if fmt == 'jax'
           else export.tflite_predict(blob, x))
    assert got.shape == ref.shape
    assert _rel(got, ref) <= 1e-4


def test_int8_tflite_agrees_on_digits(digits_workdir, tmp_path):
  pytest.importorskip('tensorflow')
  out = str(tmp_path / 'int8.tflite')
  code, stdout, stderr = _run('--checkpoint', digits_workdir, '--format', 'tflite', '--int8',
                              '--output', out)
  assert code == 0, stderr
  assert 'int8 (top-1 agreement' in stdout
  model, variables = compact_flax.load_model(digits_workdir)
  acc = export.digits_agreement(model, variables, open(out, 'rb').read())
  assert acc['agreement'] >= 0.99 and acc['flax_top1'] >= 0.8


def test_bad_inputs_are_one_line_errors(digits_workdir, tmp_path):
  cases = [(('--checkpoint', str(tmp_path / 'nowhere'), '--format', 'jax', '--output',
             str(tmp_path / 'm')), 'nowhere'),
           (('--checkpoint', digits_workdir, '--format', 'onnx', '--output', str(tmp_path / 'm')),
            "Unknown format 'onnx'"),
           (('--checkpoint', digits_workdir, '--format', 'jax', '--output',
             str(tmp_path / 'missing' / 'm')), 'does not exist')]
  for argv, expected in cases:
    code, _, stderr = _run(*argv)
    assert code == 1 and expected in stderr and len(stderr.strip().splitlines()) == 1, stderr


def test_text_model_exports_as_jax():
  model = compact_flax.create_model('text_cct_2', kernel_size=2, vocab_size=40, seq_len=16,
                                    word_embedding_dim=8, embedding_dim=16)
  variables = merge.init_variables(model)
  ids = np.random.default_rng(0).integers(0, 40, (3, 16)).astype(np.int32)
  mask = np.arange(16)[None] < np.array([[16], [4], [9]])
  exported = jax.export.deserialize(export.export_jax(model, variables))
  np.testing.assert_allclose(exported.call(ids, mask), model.apply(variables, ids, mask=mask),
                             rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='--format jax'):
    export.export_tflite(model, variables)


def test_nnx_face_same_logits_and_trains():
  linen = compact_flax.create_model('vit_2_4_32', img_size=16, num_classes=4)
  variables = merge.init_variables(linen, seed=3)
  model = nnx_models.to_nnx(linen, variables)
  x = np.random.default_rng(1).normal(size=(4, 16, 16, 3)).astype(np.float32)
  y = np.array([0, 1, 2, 3])
  np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(model, x),
                             jax.jit(linen.apply)(variables, x), rtol=1e-6, atol=1e-6)
  optimizer = nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer):
    def loss_fn(model):
      logits = model(x, train=True)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(step(model, optimizer)) for _ in range(3)]
  assert losses[-1] < losses[0]
  params = nnx_models.nnx_params(model)
  assert jax.tree.structure(params) == jax.tree.structure(variables['params'])
  assert not np.array_equal(params['classifier']['fc']['kernel'],
                            variables['params']['classifier']['fc']['kernel'])
