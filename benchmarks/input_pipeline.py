"""Images/s of the CIFAR-10 recipe's input path: the host pipeline and the on-device path.

  python benchmarks/input_pipeline.py                 # needs cifar10 prepared for TFDS
  python benchmarks/input_pipeline.py --mock          # tfds.testing.mock_data: random images

host:      tf.data decode + random-resized crop + flip (TF), then RandAugment as jitted JAX on
           the host CPU; what `aug.on_device=False` feeds (the step then mixes, normalises and
           erases on the device: not timed here).
on_device: tf.data decode only; crop, flip, RandAugment, Mixup/CutMix, normalisation and erasing
           jitted on the default JAX device (`aug.on_device=True`), timed with the transfer.
device_only: the same on-device transform on device-resident batches: the ceiling when the host
           only has to move uint8 images.
The last line printed is one JSON object.
"""

import argparse
import contextlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from compact_flax import augment  # pylint: disable=g-import-not-at-top
from compact_flax import input_pipeline
from configs import cifar10_cct7


def _rate(batches, n, batch_size, consume):
  for _ in range(2):  # warm-up: compilation, tf.data start-up
    jax.block_until_ready(consume(next(batches)))
  t0 = time.perf_counter()
  for _ in range(n):
    out = consume(next(batches))
  jax.block_until_ready(out)
  return n * batch_size / (time.perf_counter() - t0)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--batches', type=int, default=20)
  parser.add_argument('--mock', action='store_true', help='tfds.testing.mock_data, no download')
  args = parser.parse_args()
  config = cifar10_cct7.get_config()
  config.aug.reprob = 0.25  # every per-image op on, as in configs/datasets/cifar10.yml
  sharding = NamedSharding(Mesh(jax.devices(), ('data',)), P('data'))
  result = {'batch_size': args.batch_size, 'device': jax.devices()[0].device_kind,
            'cpus': os.cpu_count(), 'mock_data': args.mock, 'date': time.strftime('%Y-%m-%d')}
  mock = contextlib.nullcontext()
  if args.mock:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    mock = tfds.testing.mock_data(num_examples=args.batch_size * (args.batches + 4))
  with mock:
    for on_device in (False, True):
      config.aug.on_device = on_device
      source = input_pipeline.TFDSSource('cifar10', config.aug)
      batches = source.train_batches(0, batch_size=args.batch_size, seed=0, sharding=sharding)
      recipe = augment.DeviceAugment(config.aug, on_device=True, crop=True)

      def mix(b, k, recipe=recipe):
        images, targets = augment.mixup_cutmix(
            recipe.before(b['image'], k), b['label'], k, num_classes=10, smoothing=0.1,
            mixup_alpha=0.8, cutmix_alpha=1.0, round_pixels=True)
        return recipe.after(images, k), targets

      mix = jax.jit(mix)
      consume = (lambda b: mix(b, jax.random.key(0))) if on_device else (lambda b: b['image'])
      name = 'on_device' if on_device else 'host'
      result[f'{name}_images_per_sec'] = _rate(batches, args.batches, args.batch_size, consume)
      print(f'{name}: {result[f"{name}_images_per_sec"]:.0f} images/s', flush=True)
      if on_device:
        raw = next(batches)
        raw = {'image': raw['image'], 'label': raw['label']}
        rate = _rate(iter(lambda: raw, None), args.batches, args.batch_size,
                     lambda b: mix(b, jax.random.key(1)))
        result['device_only_images_per_sec'] = rate
        print(f'device_only: {rate:.0f} images/s', flush=True)
  print(json.dumps(result))


if __name__ == '__main__':
  main()
