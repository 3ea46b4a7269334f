"""The host side of the CIFAR-10 recipe's input: what the host does per epoch, the step not run.

  python benchmarks/input_pipeline.py --synthetic --aug_on_device   # augmentation in the step
  python benchmarks/input_pipeline.py --synthetic                   # augmentation on the host
  python benchmarks/input_pipeline.py --mock                        # the TFDS source, mocked

`--synthetic`: one CIFAR-10-sized epoch (50,000 random 32x32 uint8 images held in memory,
`input_pipeline.ArraySource`, as the trainer holds CIFAR) of the recipe's batches (128), each
sharded onto every device and waited for: with `--aug_on_device` the host only gathers and moves
uint8 rows (crop, flip, RandAugment, Mixup/CutMix and erasing then run in the jitted step, not
timed here); without it the host also crops, flips and RandAugments each batch, as
`aug.on_device=False` does. No TensorFlow is imported. `host_s_per_epoch` is the host's time
for the epoch; it bounds the images/s a device can be fed.

Without `--synthetic`: the TFDS source the trainer builds for cifar10 (`--mock`:
tfds.testing.mock_data's random images), host path and on-device path, and the on-device
transform alone on device-resident batches. The last line printed is one JSON object.
"""

import argparse
import contextlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import results  # pylint: disable=g-import-not-at-top
from compact_flax import augment
from compact_flax import input_pipeline
from configs import cifar10_cct7

EPOCH_IMAGES = 50_000


def recipe(on_device: bool):
  config = cifar10_cct7.get_config()
  config.aug.reprob = 0.25  # every per-image op on, as in configs/datasets/cifar10.yml
  config.aug.on_device = on_device
  return config


def host_epoch(batch_size: int, on_device: bool, images: int = EPOCH_IMAGES):
  """(seconds, batches) of the host's part of one epoch of `images` synthetic CIFAR images."""
  config = recipe(on_device)
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (images, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, images).astype(np.int32)
  source = input_pipeline.ArraySource('synthetic_cifar', config.aug, pixels, labels,
                                      pixels[:batch_size], labels[:batch_size],
                                      [str(i) for i in range(10)])
  sharding = NamedSharding(Mesh(jax.devices(), ('data',)), P('data'))
  warm = source.warm_up(batch_size)
  if warm is not None:
    warm.join()  # compiling the host augmentation is start-up, not the epoch
  batches = source.train_batches(0, batch_size=batch_size, seed=0, sharding=sharding)
  jax.block_until_ready(next(batches))  # the first transfer
  steps = images // batch_size
  t0 = time.perf_counter()
  for _ in range(steps):
    jax.block_until_ready(next(batches))
  return time.perf_counter() - t0, steps


def _rate(batches, n, batch_size, consume):
  for _ in range(2):  # warm-up: compilation, tf.data start-up
    jax.block_until_ready(consume(next(batches)))
  t0 = time.perf_counter()
  for _ in range(n):
    out = consume(next(batches))
  jax.block_until_ready(out)
  return n * batch_size / (time.perf_counter() - t0)


def tfds_paths(args, result):
  """Images/s of the TFDS cifar10 source, host path and on-device path."""
  sharding = NamedSharding(Mesh(jax.devices(), ('data',)), P('data'))
  mock = contextlib.nullcontext()
  if args.mock:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    mock = tfds.testing.mock_data(num_examples=args.batch_size * (args.batches + 4))
  rates = {}
  with mock:
    for on_device in (False, True):
      config = recipe(on_device)
      source = input_pipeline.TFDSSource('cifar10', config.aug)
      batches = source.train_batches(0, batch_size=args.batch_size, seed=0, sharding=sharding)
      step_part = augment.DeviceAugment(config.aug, on_device=True, crop=True)

      def mix(b, k, step_part=step_part):
        images, targets = augment.mixup_cutmix(
            step_part.before(b['image'], k), b['label'], k, num_classes=10, smoothing=0.1,
            mixup_alpha=0.8, cutmix_alpha=1.0, round_pixels=True)
        return step_part.after(images, k), targets

      mix = jax.jit(mix)
      consume = (lambda b: mix(b, jax.random.key(0))) if on_device else (lambda b: b['image'])
      name = 'on_device' if on_device else 'host'
      rates[name] = _rate(batches, args.batches, args.batch_size, consume)
      print(f'{name}: {rates[name]:.0f} images/s', flush=True)
      if on_device:
        raw = next(batches)
        raw = {'image': raw['image'], 'label': raw['label']}
        rates['device_only'] = _rate(iter(lambda: raw, None), args.batches, args.batch_size,
                                     lambda b: mix(b, jax.random.key(1)))
        print(f'device_only: {rates["device_only"]:.0f} images/s', flush=True)
  result.update({f'{k}_images_per_sec': v for k, v in rates.items()})
  return {'host': 'host: the TFDS source\'s host augmentation',
          'on_device': 'on device: the whole recipe in the step, the source feeding uint8',
          'device_only': 'on device, device-resident batches (the transform alone)'}, rates


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--synthetic', action='store_true',
                      help='one epoch of 50,000 in-memory synthetic images, no TensorFlow')
  parser.add_argument('--aug_on_device', action='store_true',
                      help='with --synthetic: the augmentation in the step (aug.on_device=True)')
  parser.add_argument('--images', type=int, default=EPOCH_IMAGES,
                      help='with --synthetic: images in the epoch')
  parser.add_argument('--batches', type=int, default=20, help='without --synthetic: batches timed')
  parser.add_argument('--mock', action='store_true', help='tfds.testing.mock_data, no download')
  parser.add_argument('--results', default=results.default_path('input_pipeline'),
                      help=results.HELP)
  args = parser.parse_args()
  result = {'batch_size': args.batch_size, 'device': jax.devices()[0].device_kind,
            'devices': jax.device_count(), 'cpus': os.cpu_count(),
            'date': time.strftime('%Y-%m-%d')}
  if args.synthetic:
    seconds, steps = host_epoch(args.batch_size, args.aug_on_device, args.images)
    path = ('augmentation in the step: the host gathers and moves uint8' if args.aug_on_device
            else 'augmentation on the host (crop, flip, RandAugment)')
    result.update(aug_on_device=args.aug_on_device, images=steps * args.batch_size,
                  host_s_per_epoch=seconds, images_per_sec=steps * args.batch_size / seconds)
    print(f'{path}: {seconds:.2f} s for {steps * args.batch_size:,} images '
          f'({result["images_per_sec"]:,.0f} images/s)', flush=True)
    print(json.dumps(result))
    results.record(args.results, 'input_pipeline', {
        'data': f'synthetic uint8 32x32 in memory, {steps * args.batch_size:,} images',
        'batch_size': args.batch_size, 'path': path},
        {'host_s_per_epoch': seconds, 'images_per_sec': result['images_per_sec']})
    return
  result['mock_data'] = args.mock
  labels, rates = tfds_paths(args, result)
  print(json.dumps(result))
  data = 'tfds mock (random 32x32)' if args.mock else 'cifar10 (TFDS)'
  for key, path in labels.items():
    results.record(args.results, 'input_pipeline',
                   {'data': data, 'batch_size': args.batch_size, 'path': path},
                   {'images_per_sec': rates[key]})


if __name__ == '__main__':
  main()
