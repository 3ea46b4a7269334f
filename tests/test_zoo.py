"""The pretrained zoo, prediction on image files and the sequence-pooling pictures."""

import subprocess
import sys
import urllib.error

import jax
import numpy as np
import pytest

import compact_flax
from compact_flax import convert, data, predict, train, visualize, zoo
from configs import digits_cct

PIL = pytest.importorskip('PIL.Image')


@pytest.fixture
def cache(tmp_path, monkeypatch):
  monkeypatch.setenv('COMPACT_FLAX_CACHE', str(tmp_path / 'cache'))
  return tmp_path / 'cache'


def test_local_file_url_and_converted_dir_load_the_same_and_the_cache_is_used(
    fixtures_dir, cache, monkeypatch):
  pytest.importorskip('torch')
  path = fixtures_dir / 'vit_2_4_32.pth'
  z = np.load(fixtures_dir / 'vit_2_4_32.npz')
  x, ref = z['input_nchw'].transpose(0, 2, 3, 1), z['logits']
  model, variables = compact_flax.load_pretrained('vit_2_4_32', str(path))
  np.testing.assert_allclose(model.apply(variables, x), ref, rtol=1e-5, atol=1e-5)
  converted = list((cache / 'converted').iterdir())
  assert len(converted) == 1

  def no_second_conversion(*a, **k):
    raise AssertionError('converted twice')

  monkeypatch.setattr(convert, 'load_torch_checkpoint', no_second_conversion)
  model, variables = compact_flax.load_pretrained('vit_2_4_32', path.as_uri())  # file:// URL
  np.testing.assert_allclose(model.apply(variables, x), ref, rtol=1e-5, atol=1e-5)
  model, variables = compact_flax.load_pretrained('vit_2_4_32', str(converted[0]))
  np.testing.assert_allclose(model.apply(variables, x), ref, rtol=1e-5, atol=1e-5)
  model, variables = compact_flax.load_pretrained('vit_2_4_32', str(converted[0]), num_classes=3)
  assert model.apply(variables, x).shape == (4, 3)


def test_names_without_weights_and_no_network_are_clear(cache, monkeypatch):
  with pytest.raises(ValueError, match="'cvt_2_4_32' has no published weights"):
    compact_flax.load_pretrained('cvt_2_4_32')
  with pytest.raises(ValueError, match='Did you mean'):
    compact_flax.load_pretrained('cct_7_3x1')

  def offline(*a, **k):
    raise urllib.error.URLError('no network')

  monkeypatch.setattr(zoo.urllib.request, 'urlopen', offline)
  with pytest.raises(RuntimeError, match='shi-labs.com.*cct_7_3x1_32_cifar10_300epochs.pth.*source='):
    compact_flax.load_pretrained('cct_7_3x1_32')
  assert not list((cache / 'downloads').glob('*'))  # nothing half-written is left


@pytest.fixture(scope='module')
def digits_run(tmp_path_factory):
  config = digits_cct.get_config()
  config.num_epochs, config.warmup_epochs = 8, 1
  workdir = tmp_path_factory.mktemp('digits')
  record = train.train_and_evaluate(config, str(workdir))
  return config, workdir, record


def _png(path, img01):
  PIL.fromarray(np.clip(np.round(img01 * 255), 0, 255).astype(np.uint8)).save(path)


def test_predict_equals_the_models_own_output(digits_run, tmp_path):
  config, workdir, record = digits_run
  assert record['eval_top1'] > 0.8
  source = data.digits()
  m, s = source.normalization['mean'][0], source.normalization['std'][0]
  paths = []
  for i in range(4):
    paths.append(str(tmp_path / f'{i}.png'))
    _png(paths[-1], source.eval_inputs['image'][i, :, :, 0] * s + m)
  (tmp_path / 'bad.png').write_bytes(b'\x89PNG broken')
  model, variables = compact_flax.load_model(str(workdir))
  spec = predict.eval_spec(compact_flax.checkpoint.read_spec(str(workdir)), model)
  assert spec['class_names'] == [str(i) for i in range(10)]
  results, failed = predict.predict_files(model, variables, spec, paths + [str(tmp_path / 'bad.png')])
  assert [p for p, _ in failed] == [str(tmp_path / 'bad.png')]
  own = np.asarray(jax.nn.softmax(model.apply(variables, source.eval_inputs['image'][:4])))
  for (path, top), p in zip(results, own):
    assert top[0][0] == str(int(p.argmax()))
    np.testing.assert_allclose([q for _, q in top], np.sort(p)[::-1][:5], atol=0.02)
  run = subprocess.run([sys.executable, '-m', 'compact_flax.predict', '--checkpoint',
                        str(workdir), *paths[:2], str(tmp_path / 'bad.png')],
                       capture_output=True, text=True, check=False)
  assert run.returncode == 1
  assert run.stdout.count('.png: ') == 2 and 'bad.png: cannot read' in run.stderr
  assert train.evaluate_checkpoint(config, str(workdir))['eval_top1'] == pytest.approx(
      record['eval_top1'])


@pytest.mark.parametrize('name', ['cct_2_3x2_32', 'vit_2_4_32'])
def test_visualize_weights_sum_to_one_and_png_has_the_expected_size(fixtures_dir, name, tmp_path):
  pytest.importorskip('torch')
  model, variables = convert.load_torch_checkpoint(str(fixtures_dir / f'{name}.pth'), name)
  x = np.load(fixtures_dir / f'{name}.npz')['input_nchw'].transpose(0, 2, 3, 1)
  w = visualize.token_weights(model, variables, x)
  assert w.shape == (4, 8, 8)
  np.testing.assert_allclose(w.sum((1, 2)), 1.0, rtol=1e-5)
  image = tmp_path / 'in.png'
  _png(image, np.random.default_rng(0).uniform(size=(40, 60, 3)))
  out = tmp_path / 'out.png'
  run = subprocess.run([sys.executable, '-m', 'compact_flax.visualize', '--model', name,
                        '--pretrained', '--source', str(fixtures_dir / f'{name}.pth'),
                        str(image), '--output', str(out), '--panel', '128'],
                       capture_output=True, text=True, check=False,
                       env={**__import__('os').environ, 'COMPACT_FLAX_CACHE': str(tmp_path / 'c')})
  assert run.returncode == 0, run.stderr[-2000:]
  with PIL.open(out) as img:
    assert img.size == (256, 128)  # two square panels: the model sees a 32x32 centre crop
