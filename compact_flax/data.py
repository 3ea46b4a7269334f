"""The input-source interface the trainer reads, and the sources that need no TensorFlow.

`Source` lists everything the trainer uses. Built in here: `digits` (real data shipped with the
package) and `SyntheticSource` (made on the device, for benchmarks). The tf.data sources (TFDS,
image folders) and `get_source`, which picks one by name, are in `input_pipeline.py`.
"""

import gzip
import os
import queue
import threading
from typing import Any, Dict, Iterator, Mapping, Optional, Protocol, Sequence, Tuple
from typing import runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from compact_flax import steps

Batch = Dict[str, jax.Array]


@runtime_checkable
class Source(Protocol):
  """An input source: what the trainer reads from it, and nothing else.

  Batches are global jax.Arrays sharded over the mesh (`sharding`); each process makes only its
  own rows. The training order is a pure function of (seed, step), so a resumed run sees the same
  batches.

  Optional: `warm_up(batch_size) -> Optional[threading.Thread]`, which starts compiling the
  source's host-side work in the background; the trainer calls it, where a source has it, before
  the first batch (the image-folder and TFDS sources do).
  """
  name: str
  num_classes: int
  class_names: Sequence[str]
  image_shape: Tuple[int, ...]      # one example's shape, e.g. (H, W, C); text: (seq_len,)
  num_train: int
  num_eval: int
  # How pixels in [0, 1] were normalised (mean, std, crop_pct, interpolation), stored with
  # checkpoints for prediction; {} when unknown.
  normalization: Mapping[str, Any]
  # The recipe's part inside the jitted train step (an `augment.DeviceAugment`: the per-image ops
  # it runs, then normalisation and erasing after Mixup); None when batches arrive as model input.
  device_augment: Optional[Any]

  def train_batches(self, start_step: int, *, batch_size: int, seed: int,
                    sharding) -> Iterator[Batch]:
    """'image' (text: 'ids' and 'token_mask') and 'label' from `start_step` on, forever."""

  def train_batch_spec(self, batch_size: int) -> Dict[str, jax.ShapeDtypeStruct]:
    """The global shape and dtype of each array of a training batch: the trainer compiles the
    step for them before the first batch exists."""

  def eval_batches(self, *, batch_size: int, sharding) -> Iterator[Batch]:
    """'image', 'label' and 'mask' (False on padding rows) over the eval split, once."""


def to_global(local: Dict[str, np.ndarray], sharding) -> Batch:
  """This process's rows -> one global array per key, sharded on the mesh's 'data' axis."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


class Prefetch:
  """Iterates `batches` in a background thread, up to `size` ahead, so that host work (decoding,
  augmentation, transfers) overlaps the steps and the first step's compilation. The order is
  unchanged; an error in the thread is raised at the consumer's next `next()`. `close()` stops
  the thread (also a context manager). `threaded=False` iterates in the caller's thread instead
  (for code that is not thread-safe, such as `tfds.testing.mock_data`'s file-system swap)."""

  def __init__(self, batches: Iterator[Batch], size: int = 2, threaded: bool = True):
    self._iterator = None if threaded else iter(batches)
    self._queue = queue.Queue(maxsize=size)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, args=(batches,), daemon=True,
                                    name='compact_flax-prefetch')
    if threaded:
      self._thread.start()

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _run(self, batches):
    try:
      for batch in batches:
        if not self._put((True, batch)):
          return
      self._put((False, StopIteration()))
    except BaseException as e:  # pylint: disable=broad-except
      self._put((False, e))

  def __iter__(self):
    return self

  def __next__(self) -> Batch:
    if self._iterator is not None:
      return next(self._iterator)
    ok, item = self._queue.get()
    if not ok:
      self._queue.put((False, item))  # every later call raises too
      raise item
    return item

  def close(self):
    self._stop.set()
    if self._thread.is_alive():
      self._thread.join()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def prefetch(batches: Iterator[Batch], size: int = 2) -> Prefetch:
  """`Prefetch(batches, size)`."""
  return Prefetch(batches, size)


def local_rows(global_batch: int) -> slice:
  """The rows of a global batch that this process feeds."""
  n = jax.process_count()
  if global_batch % n:
    raise ValueError(f'batch size {global_batch} does not divide over {n} processes.')
  per = global_batch // n
  return slice(jax.process_index() * per, (jax.process_index() + 1) * per)


def train_indices(num_examples: int, batch_size: int, seed: int,
                  start_step: int) -> Iterator[Tuple[int, np.ndarray]]:
  """(step, this process's rows of the global batch) from `start_step` on, forever: a permutation
  per (seed, epoch); the last partial batch of an epoch is dropped."""
  steps_per_epoch = num_examples // batch_size
  rows = local_rows(batch_size)
  step = start_step
  while True:
    epoch, offset = divmod(step, steps_per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(num_examples)
    for offset in range(offset, steps_per_epoch):
      yield step, order[offset * batch_size:(offset + 1) * batch_size][rows]
      step += 1


class InMemorySource:
  """Arrays held in host memory: images (N, H, W, C) float32 normalised, or a dict of input arrays
  by batch key (text: 'ids' and 'token_mask'); labels (N,) int32."""

  def __init__(self, name, train_images, train_labels, eval_images, eval_labels, class_names):
    self.name = name
    as_dict = lambda x: dict(x) if isinstance(x, Mapping) else {'image': x}
    self.train_inputs, self.train_labels = as_dict(train_images), train_labels
    self.eval_inputs, self.eval_labels = as_dict(eval_images), eval_labels
    self.class_names = list(class_names)
    self.num_classes = len(class_names)
    self.image_shape = tuple(next(iter(self.train_inputs.values())).shape[1:])
    self.num_train, self.num_eval = len(train_labels), len(eval_labels)
    self.normalization = {}  # how pixels in [0, 1] were normalised: set by the maker
    self.device_augment = None

  def train_batches(self, start_step: int, *, batch_size: int, seed: int,
                    sharding) -> Iterator[Batch]:
    """Global batches from `start_step` on, forever; the last partial batch of an epoch is dropped."""
    for _, idx in train_indices(self.num_train, batch_size, seed, start_step):
      yield to_global({**{k: v[idx] for k, v in self.train_inputs.items()},
                       'label': self.train_labels[idx]}, sharding)

  def train_batch_spec(self, batch_size: int) -> Dict[str, jax.ShapeDtypeStruct]:
    arrays = {**self.train_inputs, 'label': self.train_labels}
    return {k: jax.ShapeDtypeStruct((batch_size,) + v.shape[1:], v.dtype)
            for k, v in arrays.items()}

  def eval_batches(self, *, batch_size: int, sharding) -> Iterator[Batch]:
    """The whole eval split once; the last batch is padded and `mask` marks the real rows."""
    rows = local_rows(batch_size)
    for start in range(0, self.num_eval, batch_size):
      idx = np.arange(start, start + batch_size)
      mask = idx < self.num_eval
      idx = np.where(mask, idx, 0)[rows]
      yield to_global({**{k: v[idx] for k, v in self.eval_inputs.items()},
                       'label': self.eval_labels[idx], 'mask': mask[rows]}, sharding)


def digits(eval_fraction: float = 0.2, split_seed: int = 0) -> InMemorySource:
  """scikit-learn's 8x8 handwritten digits (1797 images, UCI), shipped in this package.

  A fixed split: 80% train, 20% held out, by a seeded permutation. Pixels 0..16 are scaled to
  [0, 1] and standardised with the training split's mean and std.
  """
  path = os.path.join(os.path.dirname(__file__), 'data', 'digits.csv.gz')
  with gzip.open(path, 'rt') as f:
    data = np.loadtxt(f, delimiter=',', dtype=np.float32)
  images, labels = data[:, :64].reshape(-1, 8, 8, 1) / 16.0, data[:, 64].astype(np.int32)
  order = np.random.default_rng(split_seed).permutation(len(labels))
  n_eval = int(round(len(labels) * eval_fraction))
  tr, ev = order[n_eval:], order[:n_eval]
  mean, std = images[tr].mean(), images[tr].std()
  norm = lambda x: ((x - mean) / std).astype(np.float32)
  source = InMemorySource('digits', norm(images[tr]), labels[tr], norm(images[ev]), labels[ev],
                          [str(i) for i in range(10)])
  source.normalization = {'mean': [float(mean)], 'std': [float(std)], 'crop_pct': 1.0,
                          'interpolation': 'bicubic'}
  return source


class SyntheticSource:
  """Random images and labels made on the device (no TensorFlow, no host work): for benchmarks."""

  def __init__(self, image_shape=(32, 32, 3), num_classes=10, num_train=50_000, num_eval=1_000):
    self.name = 'synthetic'
    self.image_shape, self.num_classes = tuple(image_shape), num_classes
    self.num_train, self.num_eval = num_train, num_eval
    self.class_names = [str(i) for i in range(num_classes)]
    self.normalization, self.device_augment = {}, None

  def _make(self, batch_size, sharding, with_mask=False):
    def make(key):
      ki, kl = jax.random.split(key)
      out = {'image': jax.random.normal(ki, (batch_size,) + self.image_shape, jnp.float32),
             'label': jax.random.randint(kl, (batch_size,), 0, self.num_classes, jnp.int32)}
      if with_mask:
        out['mask'] = jnp.ones((batch_size,), bool)
      return out
    return jax.jit(make, out_shardings=sharding)

  def train_batches(self, start_step, *, batch_size, seed, sharding):
    make = self._make(batch_size, sharding)
    step = start_step
    while True:
      yield make(steps.step_keys(jax.random.key(seed), step)[3])  # apart from the step's keys
      step += 1

  def train_batch_spec(self, batch_size):
    return {'image': jax.ShapeDtypeStruct((batch_size,) + self.image_shape, jnp.float32),
            'label': jax.ShapeDtypeStruct((batch_size,), jnp.int32)}

  def eval_batches(self, *, batch_size, sharding):
    make = self._make(batch_size, sharding, with_mask=True)
    for i in range(max(1, self.num_eval // batch_size)):
      yield make(jax.random.key(10_000 + i))


SOURCES = {'digits': digits, 'synthetic': SyntheticSource}  # the built-in sources by name
