"""TFDS and image-folder pipelines under tfds.testing.mock_data; every recipe config end to end."""

import functools
import importlib
import itertools
import pathlib

import jax
import numpy as np
import pytest

tf = pytest.importorskip('tensorflow')
tfds = pytest.importorskip('tensorflow_datasets')

from compact_flax import data  # pylint: disable=g-import-not-at-top
from compact_flax import input_pipeline
from compact_flax import train
from configs import common

CONFIGS = sorted(p.stem for p in (pathlib.Path(__file__).parents[1] / 'configs').glob('*.py')
                 if p.stem not in ('__init__', 'common', 'digits_cct') and 'text' not in p.stem)


# Recipes whose test run would be another's with other numbers only: the 5000-epoch ones are their
# 1500-epoch ones run longer (CIFAR-100's at another learning rate), and CIFAR-100's 1500-epoch one
# is its 300-epoch one with another rate and decay and the `_sine` name, whose embedding it trains
# as a learnable one (the same parameters). That sameness is what is checked for them.
SAME_RUN = {
    'cifar10_cct7_sine_5000': ('cifar10_cct7_sine_1500', ()),
    'cifar100_cct7_sine_5000': ('cifar100_cct7_sine_1500', ('learning_rate',)),
    'cifar100_cct7_sine_1500': ('cifar100_cct7', ('learning_rate', 'weight_decay')),
}


def _test_config(name):
  config = importlib.import_module(f'configs.{name}').get_config()
  size = 32 if config.aug.img_size == 32 else 64  # keep CPU time small; every knob stays on
  config.aug.img_size = size
  config.model = 'cct_2_3x2_32_sine' if 'sine' in config.model else 'cct_2_3x2_32'
  config.model_kwargs.img_size = size
  config.num_epochs, config.cooldown_epochs, config.warmup_epochs = 1, 1, 0
  config.batch_size = config.eval_batch_size = 8
  config.init_from = ''
  config.dtype = 'float32'
  config.checkpoint_async = False  # mock_data swaps the file system while it builds a dataset
  return config


@pytest.mark.parametrize('name', CONFIGS)
def test_config_runs_end_to_end_with_its_whole_recipe(name, tmp_path, monkeypatch):
  config = _test_config(name)
  if name in SAME_RUN:
    other_name, numbers = SAME_RUN[name]
    other = _test_config(other_name)
    for field in numbers:
      other[field] = config[field]
    if other.model != config.model:  # the `_sine` variant built with a learnable embedding
      assert config.model_kwargs.positional_embedding == 'learnable'
      assert config.model == other.model + '_sine'
      other.model, other.model_kwargs.positional_embedding = config.model, 'learnable'
    assert config.to_dict() == other.to_dict()
    return
  # mock_data swaps the file system while it builds a dataset: the next epoch's, built by the
  # prefetch thread, would overlap a checkpoint write. Batches are made in the loop's thread here.
  monkeypatch.setattr(data, 'prefetch', functools.partial(data.Prefetch, threaded=False))
  with tfds.testing.mock_data(num_examples=16):
    record = train.train_and_evaluate(config, str(tmp_path))
  assert record['step'] == 4
  assert np.isfinite(record['eval_loss'])


def _aug(**kw):
  aug = common.get_config().aug
  aug.update(kw)
  return aug


def _shapes(arrays):
  return {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in arrays.items()}


@pytest.mark.parametrize('in_memory', [True, False])
def test_resumed_pipeline_sees_the_same_batches(in_memory, monkeypatch):
  if not in_memory:
    monkeypatch.setattr(input_pipeline, 'IN_MEMORY_BYTES', 0)
  sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(jax.devices(), ('data',)),
                                        jax.sharding.PartitionSpec('data'))
  with tfds.testing.mock_data(num_examples=40):
    source = input_pipeline.TFDSSource('cifar10', _aug(reprob=0.25))
    assert source.in_memory == in_memory
    assert isinstance(source, data.Source) and not source.device_augment.on_device
    fresh = source.train_batches(0, batch_size=8, seed=3, sharding=sharding)
    batches = [next(fresh) for _ in range(7)]  # crosses an epoch boundary (5 steps/epoch)
    assert batches[0]['image'].dtype == np.uint8, 'pixel values until the step mixes them'
    assert _shapes(source.train_batch_spec(8)) == _shapes(batches[0])  # the step compiled ahead
    resumed = source.train_batches(6, batch_size=8, seed=3, sharding=sharding)
    np.testing.assert_array_equal(next(resumed)['image'], batches[6]['image'])
    assert not np.array_equal(batches[0]['image'], batches[5]['image'])
    evals = list(source.eval_batches(batch_size=16, sharding=sharding))
    assert sum(int(b['mask'].sum()) for b in evals) == 40


def test_without_rand_augment_the_host_jitters_colour(monkeypatch):
  monkeypatch.setattr(input_pipeline, 'IN_MEMORY_BYTES', 0)  # tf.data crops; the host jitters
  sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(jax.devices(), ('data',)),
                                        jax.sharding.PartitionSpec('data'))
  with tfds.testing.mock_data(num_examples=16):
    plain = input_pipeline.TFDSSource('cifar10', _aug(auto_augment='', color_jitter=0.0))
    jittered = input_pipeline.TFDSSource('cifar10', _aug(auto_augment=''))
    a, b = (next(s.train_batches(0, batch_size=8, seed=1, sharding=sharding))
            for s in (plain, jittered))
  np.testing.assert_array_equal(a['label'], b['label'])
  assert not np.array_equal(a['image'], b['image']), 'the same crops, then jittered'
  assert plain.host_augment_seconds == 0 and jittered.host_augment_seconds > 0


def test_a_small_tfds_dataset_is_read_once_into_memory_and_fed_without_tf_data(monkeypatch):
  sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(jax.devices(), ('data',)),
                                        jax.sharding.PartitionSpec('data'))
  with tfds.testing.mock_data(num_examples=24):
    source = input_pipeline.TFDSSource('cifar10', _aug(on_device=True))
  assert source.in_memory and source._train_array.shape == (24, 32, 32, 3)
  assert source._train_array.dtype == np.uint8 and source.device_augment.crop
  # Outside mock_data (no dataset on disk) and without TensorFlow's reader: memory only.
  monkeypatch.setattr(input_pipeline, '_tf', lambda: pytest.fail('tf.data was used'))
  batches = source.train_batches(0, batch_size=8, seed=0, sharding=sharding)
  for _ in range(4):  # more than an epoch
    batch = next(batches)
  assert batch['image'].dtype == np.uint8 and batch['image'].shape == (8, 32, 32, 3)
  assert sum(int(b['mask'].sum()) for b in source.eval_batches(batch_size=8,
                                                                 sharding=sharding)) == 24


def test_a_tfds_dataset_too_large_for_memory_streams(monkeypatch):
  monkeypatch.setattr(input_pipeline, 'IN_MEMORY_BYTES', 24 * 32 * 32 * 3)  # one split fits
  with tfds.testing.mock_data(num_examples=24):
    assert not input_pipeline.TFDSSource('cifar10', _aug()).in_memory


@pytest.mark.parametrize('platform,expected', [('cpu', False), ('gpu', True), ('tpu', True)])
def test_auto_augments_in_the_step_on_accelerators_and_on_the_host_on_cpus(platform, expected):
  aug = _aug()
  assert aug.on_device == 'auto'
  assert input_pipeline.device_augment_for(aug, True, platform).on_device == expected
  for value in (True, False):
    assert input_pipeline.device_augment_for(_aug(on_device=value), True, platform).on_device == value


def test_every_recipe_config_augments_where_the_device_is():
  for name in CONFIGS:
    assert importlib.import_module(f'configs.{name}').get_config().aug.on_device == 'auto', name


def test_image_folder_skips_and_counts_undecodable_files(tmp_path, caplog):
  rng = np.random.default_rng(0)
  for split, n in (('train', 6), ('val', 2)):
    for cls in ('cat', 'dog'):
      folder = tmp_path / split / cls
      folder.mkdir(parents=True)
      for i in range(n):
        img = rng.integers(0, 255, (20 + i, 30, 3), dtype=np.uint8)
        (folder / f'{i}.png').write_bytes(tf.io.encode_png(img).numpy())
  (tmp_path / 'train' / 'cat' / 'broken.jpg').write_bytes(b'not an image')
  source = input_pipeline.ImageFolderSource(str(tmp_path), _aug())
  assert isinstance(source, data.Source)
  assert source.class_names == ['cat', 'dog']
  assert source.num_train == 12 and source.num_eval == 4
  assert len(source.skipped['train']) == 1
  config = common.get_config()
  config.dataset = f'folder:{tmp_path}'
  config.model = 'cct_2_3x2_32'
  config.model_kwargs.num_classes = 2
  config.num_epochs, config.cooldown_epochs, config.warmup_epochs = 1, 0, 0
  config.batch_size = config.eval_batch_size = 4
  config.dtype = 'float32'
  record = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert record['step'] == 3


def test_a_small_folder_is_held_in_memory(tmp_path, monkeypatch):
  rng = np.random.default_rng(1)
  for split, n in (('train', 8), ('val', 5)):  # 16 training images: 4 whole steps of 4
    for cls in ('a', 'b'):
      (tmp_path / split / cls).mkdir(parents=True)
      for i in range(n):
        img = rng.integers(0, 255, (40 if split == 'val' else 36, 36, 3), dtype=np.uint8)
        (tmp_path / split / cls / f'{i}.png').write_bytes(tf.io.encode_png(img).numpy())
  sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(jax.devices(), ('data',)),
                                        jax.sharding.PartitionSpec('data'))
  aug = _aug()
  memory = input_pipeline.ImageFolderSource(str(tmp_path), aug)
  on_device = input_pipeline.ImageFolderSource(str(tmp_path), _aug(on_device=True))
  monkeypatch.setattr(input_pipeline, 'IN_MEMORY_BYTES', 0)
  disk = input_pipeline.ImageFolderSource(str(tmp_path), aug)
  assert memory.in_memory and not disk.in_memory
  # Evaluation: the transformed split from memory, as tf.data gives it from the files (the last
  # batch padded only to a multiple of the devices).
  def real_rows(source):
    batches = list(source.eval_batches(batch_size=4, sharding=sharding))
    mask = np.concatenate([np.asarray(b['mask']) for b in batches])
    return len(batches), {k: np.concatenate([np.asarray(b[k]) for b in batches])[mask]
                          for k in ('image', 'label')}
  (n_memory, from_memory), (n_disk, from_disk) = real_rows(memory), real_rows(disk)
  assert n_memory == n_disk == 3 and len(from_memory['label']) == 10
  for k in from_memory:
    np.testing.assert_array_equal(from_memory[k], from_disk[k], err_msg=k)
  # Training: cropped, flipped and RandAugmented to img_size without tf.data; each image once
  # per epoch; a resumed iterator gives the same batches.
  memory.warm_up(batch_size=4)  # compiles the augmentation in the background; the batches reuse it
  train = memory.train_batches(0, batch_size=4, seed=5, sharding=sharding)
  batches = [next(train) for _ in range(8)]  # two epochs of 4 steps
  assert memory._host_transform.fn._cache_size() == 1
  assert batches[0]['image'].shape == (4, 32, 32, 3) and batches[0]['image'].dtype == np.uint8
  assert _shapes(memory.train_batch_spec(4)) == _shapes(batches[0])
  # With the augmentation in the step, the step crops: whole images until then.
  batch = next(on_device.train_batches(0, batch_size=4, seed=5, sharding=sharding))
  assert batch['image'].shape == (4, 36, 36, 3)
  assert _shapes(on_device.train_batch_spec(4)) == _shapes(batch)
  labels = [np.asarray(b['label']) for b in batches]
  assert sorted(np.concatenate(labels[:4])) == sorted(np.concatenate(labels[4:]))
  assert memory.host_augment_seconds > 0
  resumed = memory.train_batches(5, batch_size=4, seed=5, sharding=sharding)
  for b in batches[5:]:
    again = next(resumed)
    np.testing.assert_array_equal(np.asarray(again['image']), np.asarray(b['image']))


def test_a_small_folder_of_several_sizes_is_cropped_in_memory(tmp_path, monkeypatch):
  rng = np.random.default_rng(2)
  for split, n in (('train', 8), ('val', 2)):
    for cls in ('a', 'b'):
      (tmp_path / split / cls).mkdir(parents=True)
      for i in range(n):
        img = rng.integers(0, 255, (30 + 3 * i, 48 - 2 * i, 3), dtype=np.uint8)
        (tmp_path / split / cls / f'{i}.png').write_bytes(tf.io.encode_png(img).numpy())
  sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(jax.devices(), ('data',)),
                                        jax.sharding.PartitionSpec('data'))
  source = input_pipeline.ImageFolderSource(str(tmp_path), _aug())
  assert source.in_memory and source._train_images is not None
  batches = list(itertools.islice(source.train_batches(0, batch_size=4, seed=5,
                                                       sharding=sharding), 8))  # two epochs
  assert _shapes(source.train_batch_spec(4)) == _shapes(batches[0])
  assert batches[0]['image'].shape == (4, 32, 32, 3) and batches[0]['image'].dtype == np.uint8
  labels = [np.asarray(b['label']) for b in batches]
  assert sorted(np.concatenate(labels[:4])) == sorted(np.concatenate(labels[4:]))
  assert not np.array_equal(np.asarray(batches[0]['image']), np.asarray(batches[4]['image']))
  resumed = source.train_batches(5, batch_size=4, seed=5, sharding=sharding)
  for b in batches[5:]:
    np.testing.assert_array_equal(np.asarray(next(resumed)['image']), np.asarray(b['image']))
  monkeypatch.setattr(input_pipeline, 'IN_MEMORY_BYTES', 0)  # the same folder streamed
  disk = input_pipeline.ImageFolderSource(str(tmp_path), _aug())
  streamed = next(disk.train_batches(0, batch_size=4, seed=5, sharding=sharding))
  assert _shapes(streamed) == _shapes(batches[0])


def test_unprepared_dataset_says_how_to_prepare(tmp_path):
  with pytest.raises(ValueError, match='tfds build mnist'):
    input_pipeline.TFDSSource('mnist', _aug(), data_dir=str(tmp_path), download=False)
