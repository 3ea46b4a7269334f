"""Input pipelines: `get_source` by name, and the tf.data sources (TFDS datasets, image folders).

Host side (tf.data): decode, random-resized crop and flip (timm's parameters) or the eval resize
and centre crop. RandAugment, or the colour jitter where it is off (`augment.py`), runs as
jit-compiled JAX either on the host CPU (`aug.on_device=False`) or inside the train step
(`aug.on_device=True`; for fixed-size datasets such as CIFAR the crop and flip move there too).
Training batches stay in pixel values: the train step mixes them, then normalises and erases (the
source's `device_augment`), in the official loader's order. The order is a pure function of
(seed, epoch): a resumed run sees the same batches, and each process reads its own shard.
A small image folder is decoded once and held in memory (`ImageFolderSource`), without tf.data:
training images of one size are cropped, flipped and RandAugmented by one jitted function; of
several sizes, cropped and flipped through PIL first.
TensorFlow is imported only when a tf.data pipeline is built.
"""

import concurrent.futures
import difflib
import logging
import math
import os
import threading
import time
from typing import Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from compact_flax import augment
from compact_flax import data as data_lib
from compact_flax import devices
from compact_flax import steps
from compact_flax import text_data

log = logging.getLogger(__name__)

# The image size of TFDS datasets whose images all have one size (the others vary).
FIXED_SIZES = {'cifar10': (32, 32), 'cifar100': (32, 32)}

# Datasets the official configs train on: TFDS name, train split, eval split.
KNOWN = {
    'cifar10': ('cifar10', 'train', 'test'),
    'cifar100': ('cifar100', 'train', 'test'),
    'flowers102': ('oxford_flowers102', 'train', 'validation'),
    'oxford_flowers102': ('oxford_flowers102', 'train', 'validation'),
    'imagenet': ('imagenet2012', 'train', 'validation'),
    'imagenet2012': ('imagenet2012', 'train', 'validation'),
}


def _tf():
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('TFDS datasets and image folders need TensorFlow: pip install '
                      '"compact-flax[data]".') from e
  tf.config.set_visible_devices([], 'GPU')  # keep the accelerator for JAX
  return tf


def _size(aug):
  return tuple(aug.img_size) if isinstance(aug.img_size, (tuple, list)) else (aug.img_size,) * 2


def tf_random_resized_crop(image, seed, aug):
  """timm's RandomResizedCrop (10 tries, then a centre crop) with stateless TF randomness."""
  tf = _tf()
  shape = tf.shape(image)
  height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
  seeds = tf.random.experimental.stateless_split(seed, 6)
  target = height * width * tf.random.stateless_uniform([10], seeds[0], aug.scale[0], aug.scale[1])
  log_r = (math.log(aug.ratio[0]), math.log(aug.ratio[1]))
  aspect = tf.exp(tf.random.stateless_uniform([10], seeds[1], log_r[0], log_r[1]))
  w, h = tf.round(tf.sqrt(target * aspect)), tf.round(tf.sqrt(target / aspect))
  ok = (w <= width) & (h <= height) & (w > 0) & (h > 0)
  first = tf.argmax(tf.cast(ok, tf.int32))
  in_ratio = width / height
  fw = tf.where(in_ratio < aug.ratio[0], width,
                tf.where(in_ratio > aug.ratio[1], tf.round(height * aug.ratio[1]), width))
  fh = tf.where(in_ratio < aug.ratio[0], tf.round(width / aug.ratio[0]), height)
  any_ok = tf.reduce_any(ok)
  h = tf.where(any_ok, tf.gather(h, first), fh)
  w = tf.where(any_ok, tf.gather(w, first), fw)
  u = tf.random.stateless_uniform([2], seeds[2])
  top = tf.where(any_ok, tf.floor(u[0] * (height - h + 1)), tf.floor((height - fh) / 2))
  left = tf.where(any_ok, tf.floor(u[1] * (width - w + 1)), tf.floor((width - fw) / 2))
  crop = image[tf.cast(top, tf.int32):tf.cast(top + h, tf.int32),
               tf.cast(left, tf.int32):tf.cast(left + w, tf.int32)]
  size = _size(aug)
  resize = lambda m: tf.image.resize(tf.cast(crop, tf.float32), size, method=m, antialias=True)
  if aug.train_interpolation == 'random':
    coin = tf.random.stateless_uniform([], seeds[3]) < 0.5
    out = tf.cond(coin, lambda: resize('bilinear'), lambda: resize('bicubic'))
  else:
    out = resize(aug.train_interpolation)
  out = tf.clip_by_value(tf.round(out), 0, 255)
  flip = tf.random.stateless_uniform([], seeds[4]) < aug.hflip
  return tf.cast(tf.cond(flip, lambda: out[:, ::-1], lambda: out), tf.uint8)


def eval_resize_crop(img, size, crop_pct: float, interpolation: str):
  """timm's eval transform on a PIL image, as torchvision does it: Resize(int(size / crop_pct))
  of the shorter side (the longer truncated; untouched when already that size), then
  CenterCrop(size) with its rounding. `size` is (height, width); a non-square size resizes both
  sides to size / crop_pct, as timm does."""
  method = {'bicubic': Image.BICUBIC, 'bilinear': Image.BILINEAR}[interpolation]
  h, w = size
  width, height = img.size
  if h != w:
    img = img.resize((int(w / crop_pct), int(h / crop_pct)), method)
  else:
    scale = int(math.floor(h / crop_pct))
    if not ((width <= height and width == scale) or (height <= width and height == scale)):
      new = ((scale, int(scale * height / width)) if width < height else
             (int(scale * width / height), scale))
      img = img.resize(new, method)
  width, height = img.size
  top, left = int(round((height - h) / 2.0)), int(round((width - w) / 2.0))
  return img.crop((left, top, left + w, top + h))


def pil_random_resized_crop(img: np.ndarray, rng: np.random.Generator, aug) -> np.ndarray:
  """torchvision's RandomResizedCrop (timm's parameters: 10 tries, then a centre crop) and flip,
  through PIL as the official loader does, on a uint8 HWC image of any size."""
  height, width = img.shape[:2]
  log_r = (math.log(aug.ratio[0]), math.log(aug.ratio[1]))
  for _ in range(10):
    target = height * width * rng.uniform(*aug.scale)
    aspect = math.exp(rng.uniform(*log_r))
    w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
      break
  else:
    in_ratio = width / height
    w = width if in_ratio <= aug.ratio[1] else int(round(height * aug.ratio[1]))
    h = int(round(width / aug.ratio[0])) if in_ratio < aug.ratio[0] else height
    top, left = (height - h) // 2, (width - w) // 2
  method = aug.train_interpolation
  if method == 'random':
    method = 'bilinear' if rng.random() < 0.5 else 'bicubic'
  size = _size(aug)
  out = Image.fromarray(img).crop((left, top, left + w, top + h)).resize(
      (size[1], size[0]), {'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC}[method])
  out = np.asarray(out)
  return out[:, ::-1] if rng.random() < aug.hflip else out


def tf_eval_transform(image, aug):
  """The eval resize and centre crop (`eval_resize_crop`, through PIL as the official loader),
  then normalisation."""
  tf = _tf()
  size = _size(aug)

  def pil(array):
    img = Image.fromarray(array)
    return np.asarray(eval_resize_crop(img, size, aug.crop_pct, aug.interpolation), np.uint8)

  img = tf.numpy_function(pil, [image], tf.uint8, stateful=False)
  img = tf.cast(tf.ensure_shape(img, size + (3,)), tf.float32)
  return (img / 255. - np.asarray(aug.mean, np.float32)) / np.asarray(aug.std, np.float32)


def device_augment_for(aug, fixed_size: bool, platform: Optional[str] = None
                       ) -> augment.DeviceAugment:
  """The part of the recipe a source leaves to the train step: normalisation and erasing after the
  mix always; with `aug.on_device` (`augment.on_device`: 'auto' is True on GPUs and TPUs),
  RandAugment before it, and the crop and flip too for datasets whose training images all have
  one size (`fixed_size`: CIFAR, a dataset or folder held in memory)."""
  on_device = augment.on_device(aug.on_device, platform)
  return augment.DeviceAugment(aug, on_device=on_device, crop=on_device and fixed_size)


def host_augment_key(seed: int, step: int):
  """This process's key for the host augmentation of a step's batch: the step's own stream for it
  (`steps.step_keys`), apart from the keys the train step draws from."""
  return jax.random.fold_in(steps.step_keys(jax.random.key(seed), step)[3], jax.process_index())


class HostAugment:
  """`augment.before_mix` jitted for the host CPU, uint8 in and out: where the recipe's per-image
  part runs when it is not in the step. `seconds` is the time spent in it."""

  def __init__(self, aug, crop: bool):
    self.cpu = devices.host_device()
    self.fn = jax.jit(lambda x, k: augment.before_mix(x, k, aug, crop=crop).astype(jnp.uint8))
    self.seconds = 0.0
    self._compiling = None

  def compile_in_background(self, shape) -> threading.Thread:
    """Compiles for uint8 batches of `shape` in a thread; the first call waits for it."""
    images, key = np.zeros(shape, np.uint8), jax.random.key(0)
    self._compiling = threading.Thread(
        target=lambda: self._apply(images, key), daemon=True, name='compact_flax-compile-aug')
    self._compiling.start()
    return self._compiling

  def _apply(self, images, key):
    return np.asarray(self.fn(jax.device_put(images, self.cpu), jax.device_put(key, self.cpu)))

  def __call__(self, images, key):
    if self._compiling is not None:
      self._compiling.join()
      self._compiling = None
    t = time.perf_counter()
    out = self._apply(images, key)
    self.seconds += time.perf_counter() - t
    return out


class TFDataSource:
  """Common batching for TFDS splits and image folders; subclasses give `_dataset(split)`."""

  def __init__(self, name, aug, num_classes, class_names, num_train, num_eval, fixed_size):
    self.name, self.aug = name, aug
    self.num_classes, self.class_names = num_classes, list(class_names)
    self.num_train, self.num_eval = num_train, num_eval
    self.image_shape = _size(aug) + (3,)
    self.normalization = {'mean': list(aug.mean), 'std': list(aug.std),
                          'crop_pct': aug.crop_pct, 'interpolation': aug.interpolation}
    self.device_augment = device_augment_for(aug, fixed_size)
    self._crop_in_step = self.device_augment.crop
    self._host_transform = (HostAugment(aug, crop=False) if not self.device_augment.on_device
                            and augment.changes_pixels(aug) else None)
    self._host_input_shape = self.image_shape  # one image as the host augmentation gets it
    # Held in memory (`_hold`): training images of one size as one array, of several as a list;
    # the eval split already transformed. None: tf.data reads them each epoch.
    self.in_memory = False
    self._train_array = self._train_images = self._eval_array = None
    self._train_labels = self._eval_labels = None

  def _hold(self, train, train_labels, evals, eval_labels):
    """Feeds from decoded uint8 images in host memory from now on, without tf.data: training
    images of one size are cropped, flipped and RandAugmented by one jitted function (on the host,
    or in the step with `aug.on_device`); of several sizes, cropped and flipped through PIL first.
    The eval split is transformed once, here."""
    self.in_memory = True
    self._train_labels = np.asarray(train_labels, np.int32)
    self._eval_labels = np.asarray(eval_labels, np.int32)
    if isinstance(train, np.ndarray) or (len(train) and len({i.shape for i in train}) == 1):
      self._train_array = np.asarray(train) if isinstance(train, np.ndarray) else np.stack(train)
    elif len(train):
      self._train_images = list(train)
    size = _size(self.aug)
    if len(evals) and all(img.shape[:2] == size for img in evals) and self.aug.crop_pct == 1:
      self._eval_array = np.asarray(evals) if isinstance(evals, np.ndarray) else np.stack(evals)
    elif len(evals):
      self._eval_array = np.stack([np.asarray(eval_resize_crop(
          Image.fromarray(img), size, self.aug.crop_pct, self.aug.interpolation)) for img in evals])
    if self._train_array is not None:
      self.device_augment = device_augment_for(self.aug, fixed_size=True)
      self._crop_in_step = self.device_augment.crop
      self._host_transform = (None if self.device_augment.on_device
                              else HostAugment(self.aug, crop=True))
      self._host_input_shape = self._train_array.shape[1:]

  @property
  def host_augment_seconds(self) -> float:
    return self._host_transform.seconds if self._host_transform is not None else 0.0

  def warm_up(self, batch_size: int) -> Optional[threading.Thread]:
    """Starts compiling the host augmentation for training batches of `batch_size` (global) in
    the background, so that the first batch does not wait for it after the train step's
    compilation. Returns the thread (None: nothing to compile)."""
    if self._host_transform is None:
      return None
    return self._host_transform.compile_in_background(
        (batch_size // jax.process_count(),) + tuple(self._host_input_shape))

  def train_batch_spec(self, batch_size: int):
    """uint8 pixels until the step mixes them: cropped to `image_shape` unless the step crops."""
    image = self._host_input_shape if self._crop_in_step else self.image_shape
    return {'image': jax.ShapeDtypeStruct((batch_size,) + tuple(image), jnp.uint8),
            'label': jax.ShapeDtypeStruct((batch_size,), jnp.int32)}

  def _dataset(self, train: bool, seed: int):
    raise NotImplementedError

  def train_batches(self, start_step, *, batch_size, seed, sharding) -> Iterator:
    if self._train_array is not None or self._train_images is not None:
      yield from self._memory_train_batches(start_step, batch_size, seed, sharding)
      return
    tf = _tf()
    local = batch_size // jax.process_count()
    steps_per_epoch = self.num_train // batch_size
    epoch, offset = divmod(start_step, steps_per_epoch)
    while True:
      epoch_seed = seed * 1_000_003 + epoch
      ds = self._dataset(True, epoch_seed).repeat()

      def prep(i, ex, epoch_seed=epoch_seed):
        img = ex['image']
        if not self._crop_in_step:
          img = tf_random_resized_crop(img, tf.stack([tf.cast(epoch_seed, tf.int64), i]), self.aug)
        return {'image': img, 'label': tf.cast(ex['label'], tf.int32)}

      ds = ds.enumerate().map(prep, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
      ds = ds.batch(local, drop_remainder=True).take(steps_per_epoch).skip(offset)
      ds = ds.prefetch(tf.data.AUTOTUNE)
      for step, batch in enumerate(ds.as_numpy_iterator(), start=epoch * steps_per_epoch + offset):
        if self._host_transform is not None:
          batch['image'] = self._host_transform(batch['image'], host_augment_key(seed, step))
        yield data_lib.to_global(batch, sharding)
      epoch, offset = epoch + 1, 0

  def _memory_train_batches(self, start_step, batch_size, seed, sharding) -> Iterator:
    labels = self._train_labels
    for step, idx in data_lib.train_indices(self.num_train, batch_size, seed, start_step):
      if self._train_array is not None:
        images = self._train_array[idx]
      else:
        rng = np.random.default_rng([seed, step, jax.process_index()])
        images = np.stack([pil_random_resized_crop(self._train_images[i], rng, self.aug)
                           for i in idx])
      if self._host_transform is not None:
        images = self._host_transform(images, host_augment_key(seed, step))
      yield data_lib.to_global({'image': images, 'label': labels[idx]}, sharding)

  def _memory_eval_batches(self, batch_size, sharding) -> Iterator:
    local = batch_size // jax.process_count()
    rows = slice(jax.process_index(), None, jax.process_count())
    images, labels = self._eval_array[rows], self._eval_labels[rows]
    # Every process runs the same batches; the last is padded only to a multiple of this process's
    # devices (one more compile of the eval step, instead of up to a batch of padding each time).
    per_process = -(-self.num_eval // jax.process_count())
    per_device = len(sharding.addressable_devices)
    mean = np.asarray(self.aug.mean, np.float32)
    std = np.asarray(self.aug.std, np.float32)
    for start in range(0, per_process, local):
      size = min(local, -(-(per_process - start) // per_device) * per_device)
      idx = np.arange(start, start + size)
      mask = idx < len(labels)
      idx = np.where(mask, idx, 0)
      image = (images[idx].astype(np.float32) / 255. - mean) / std
      yield data_lib.to_global({'image': image, 'label': labels[idx], 'mask': mask}, sharding)

  def eval_batches(self, *, batch_size, sharding):
    if self._eval_array is not None:
      yield from self._memory_eval_batches(batch_size, sharding)
      return
    tf = _tf()
    local = batch_size // jax.process_count()
    ds = self._dataset(False, 0).map(
        lambda ex: {'image': tf_eval_transform(ex['image'], self.aug),
                    'label': tf.cast(ex['label'], tf.int32), 'mask': True},
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    # Pad to whole global batches so every process runs the same number of steps.
    per_process = -(-self.num_eval // jax.process_count())
    padded = -(-per_process // local) * local
    pad = ds.take(1).map(lambda ex: {**ex, 'mask': False}).repeat()
    ds = ds.concatenate(pad).take(padded).batch(local).prefetch(tf.data.AUTOTUNE)
    for batch in ds.as_numpy_iterator():
      yield data_lib.to_global(batch, sharding)


class ArraySource(TFDataSource):
  """uint8 images (N, H, W, 3) and labels already in memory, fed with the recipe (`aug`) as the
  TFDS and folder sources feed theirs: for data that is already in arrays, and for benchmarks.
  Needs no TensorFlow."""

  def __init__(self, name, aug, train_images, train_labels, eval_images, eval_labels,
               class_names):
    super().__init__(name, aug, len(class_names), class_names, len(train_labels),
                     len(eval_labels), fixed_size=False)
    self._hold(_as_rgb(train_images), train_labels, _as_rgb(eval_images), eval_labels)


def tfds_builder(name: str, tfds_name: str, *, data_dir=None, download=True):
  """The prepared TFDS builder of a dataset (downloaded and prepared if it may be); errors say
  what close names exist and how to prepare one without network."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds.builder(tfds_name, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except
    close = difflib.get_close_matches(tfds_name, list(KNOWN) + list(data_lib.SOURCES) + [
        n.split('/')[0] for n in tfds.list_builders()], n=3, cutoff=0.6)
    hint = f' Did you mean: {", ".join(dict.fromkeys(close))}?' if close else ''
    raise ValueError(f"Unknown dataset '{name}': not a compact-flax source "
                     f"({sorted(data_lib.SOURCES)}, 'folder:PATH') nor a TFDS dataset "
                     f'({str(e).splitlines()[0] if str(e) else type(e).__name__}).{hint}'
                     ) from None
  if not builder.is_prepared():
    hint = (f'Prepare it where there is network access with `tfds build {tfds_name} '
            f'--data_dir=DIR` (ImageNet needs its archives placed in DIR/downloads/manual '
            'first), then pass --config.data_dir=DIR.')
    if not download:
      raise ValueError(f"TFDS dataset '{tfds_name}' is not prepared in "
                       f'{builder.data_dir}. {hint}')
    try:
      builder.download_and_prepare()
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"TFDS dataset '{tfds_name}' is not prepared in "
                       f'{builder.data_dir} and could not be downloaded '
                       f'({type(e).__name__}). {hint}') from None
  return builder


class TFDSSource(TFDataSource):
  """A TFDS image-classification dataset by name; each process reads its own shard."""

  def __init__(self, name, aug, *, data_dir=None, train_split=None, eval_split=None,
               download=True):
    _tf()
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    tfds_name, default_train, default_eval = KNOWN.get(name, (name, 'train', 'test'))
    self.tfds, self.train_split = tfds, train_split or default_train
    self.eval_split = eval_split or default_eval
    self.builder = tfds_builder(name, tfds_name, data_dir=data_dir, download=download)
    info = self.builder.info
    labels = info.features['label']
    shape = info.features['image'].shape
    fixed = shape[0] is not None and tuple(shape[:2]) == _size(aug)
    super().__init__(name, aug, labels.num_classes, labels.names, self._count(self.train_split),
                     self._count(self.eval_split), fixed)
    self._read_into_memory(shape)

  def _read_into_memory(self, shape):
    """A small dataset (CIFAR-10/100: both splits decoded in at most `IN_MEMORY_BYTES`) is read
    once, as uint8, and fed from memory (`_hold`); a larger one streams through tf.data."""
    counts = {self.train_split: self.num_train, self.eval_split: self.num_eval}
    if None not in shape and sum(counts.values()) * math.prod(shape) > IN_MEMORY_BYTES:
      return
    read, budget = {}, IN_MEMORY_BYTES
    for split in counts:  # every process holds whole splits: its rows are drawn from them
      if None not in shape:
        parts = list(self.tfds.as_numpy(self.builder.as_dataset(split=split, batch_size=4096)))
        images = np.concatenate([p['image'] for p in parts])
        labels = np.concatenate([p['label'] for p in parts])
      else:
        images, labels = [], []
        for example in self.tfds.as_numpy(self.builder.as_dataset(split=split)):
          budget -= example['image'].nbytes
          if budget < 0:
            log.info('%s: larger than %d MiB decoded; streamed through tf.data.', self.name,
                     IN_MEMORY_BYTES >> 20)
            return
          images.append(example['image'])
          labels.append(example['label'])
      read[split] = (_as_rgb(images), labels)
    self._hold(*read[self.train_split], *read[self.eval_split])

  def _count(self, split):
    splits = self.builder.info.splits
    if splits:
      if split not in splits:
        raise ValueError(f"'{self.builder.name}' has no split '{split}'; it has {sorted(splits)}.")
      return splits[split].num_examples
    # No split metadata (e.g. under tfds.testing.mock_data): count once.
    return int(self.builder.as_dataset(split=split).reduce(0, lambda n, _: n + 1))

  def _dataset(self, train, seed):
    tfds, tf = self.tfds, _tf()
    split = tfds.split_for_jax_process(self.train_split if train else self.eval_split)
    read = tfds.ReadConfig(shuffle_seed=seed, interleave_cycle_length=16 if train else 1)
    ds = self.builder.as_dataset(split=split, shuffle_files=train, read_config=read,
                                 decoders=None)
    options = tf.data.Options()
    options.deterministic = True
    ds = ds.with_options(options)
    if train:
      ds = ds.shuffle(min(self.num_train, 50_000), seed=seed, reshuffle_each_iteration=False)
    return ds


# A folder whose decoded images fit in this many bytes is decoded once, at start-up, and held in
# memory: training images when they all share one size, the eval split after its transform.
IN_MEMORY_BYTES = 512 << 20


def _image_size(path: str):
  """(width, height) from the file's header, or None where PIL cannot read one."""
  try:
    with Image.open(path) as img:
      return img.size
  except Exception:  # pylint: disable=broad-except
    return None


def _as_rgb(images):
  """uint8 images (an array or a list) with three channels: grey ones repeated, as PIL's RGB."""
  if isinstance(images, np.ndarray):
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images
  return [np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img for img in images]


def _decode_rgb(path: str):
  """The image as uint8 (H, W, 3), decoded by PIL as torchvision's loader does; None if it fails."""
  try:
    with Image.open(path) as img:
      return np.asarray(img.convert('RGB'))
  except Exception:  # pylint: disable=broad-except
    return None


class ImageFolderSource(TFDataSource):
  """`root/train/<class>/*.jpg` and `root/<eval_split>/<class>/*` (JPEG, PNG, GIF, BMP).

  Files that do not decode are skipped, counted and logged once, at start-up. A small folder
  (`IN_MEMORY_BYTES`) is decoded once and held in memory, its eval split already transformed:
  no decoding per epoch, evaluation without tf.data.
  """

  def __init__(self, root, aug, *, train_split='train', eval_split='val'):
    if not os.path.isdir(os.path.join(root, train_split)):
      raise ValueError(f'Image folder {root} has no {train_split}/ sub-folder; lay it out as '
                       f'{root}/{train_split}/<class>/<image> and {root}/{eval_split}/<class>/...')
    classes = sorted(d for d in os.listdir(os.path.join(root, train_split))
                     if os.path.isdir(os.path.join(root, train_split, d)))
    listed = {}
    for split in (train_split, eval_split):
      listed[split] = [(os.path.join(root, split, cls, f), label)
                       for label, cls in enumerate(classes)
                       for f in (sorted(os.listdir(os.path.join(root, split, cls)))
                                 if os.path.isdir(os.path.join(root, split, cls)) else [])]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
      sizes = {split: list(pool.map(_image_size, [p for p, _ in pairs]))
               for split, pairs in listed.items()}
      decoded_bytes = sum(w * h * 3 for split in sizes for wh in sizes[split] if wh
                          for w, h in [wh])
      in_memory = decoded_bytes <= IN_MEMORY_BYTES
      self.files, self.skipped, decoded = {}, {}, {}
      for split, pairs in listed.items():
        if in_memory:
          images = list(pool.map(_decode_rgb, [p for p, _ in pairs]))
        else:
          images = [True if self._tf_decodes(p) else None for p, _ in pairs]
        bad = [p for (p, _), img in zip(pairs, images) if img is None]
        if bad:
          log.warning('%s/%s: skipped %d file(s) that do not decode, e.g. %s', root, split,
                      len(bad), bad[0])
        self.files[split] = [pair for pair, img in zip(pairs, images) if img is not None]
        self.skipped[split] = bad
        decoded[split] = [img for img in images if img is not None]
    self.splits = (train_split, eval_split)
    super().__init__(os.path.basename(root.rstrip('/')), aug, len(classes), classes,
                     len(self.files[train_split]), len(self.files[eval_split]), fixed_size=False)
    if in_memory:
      self._hold(decoded[train_split], [l for _, l in self.files[train_split]],
                 decoded[eval_split], [l for _, l in self.files[eval_split]])

  @staticmethod
  def _tf_decodes(path: str) -> bool:
    tf = _tf()
    try:
      tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
      return True
    except Exception:  # pylint: disable=broad-except
      return False

  def _dataset(self, train, seed):
    tf = _tf()
    pairs = self.files[self.splits[0] if train else self.splits[1]]
    rows = slice(jax.process_index(), None, jax.process_count())
    paths, labels = [p for p, _ in pairs][rows], [l for _, l in pairs][rows]
    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    if train:
      ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=False)
    decode = lambda p, l: {'image': tf.io.decode_image(tf.io.read_file(p), channels=3,
                                                       expand_animations=False), 'label': l}
    return ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def get_source(name: str, config=None) -> data_lib.Source:
  """The named source: 'digits', 'synthetic', 'synthetic_text', 'folder:/path/to/images', a TFDS
  text dataset (`text_data.TEXT_DATASETS`, or any with `dataset_kwargs.text_keys`), or any TFDS
  image dataset."""
  kwargs = dict(config.get('dataset_kwargs', {})) if config is not None else {}
  kwargs = {k: v for k, v in kwargs.items() if v is not None}  # None: unset
  if name in data_lib.SOURCES:
    return data_lib.SOURCES[name](**kwargs)
  if name == 'synthetic_text':
    return text_data.synthetic_text(**kwargs)
  if name in text_data.TEXT_DATASETS or 'text_keys' in kwargs:
    _tf()
    builder = tfds_builder(name, name, data_dir=config.get('data_dir') or None)
    return text_data.tfds_text_source(
        name, builder, train_split=config.get('train_split') or None,
        eval_split=config.get('eval_split') or None, **kwargs)
  if name.startswith('folder:'):
    return ImageFolderSource(name[len('folder:'):], config.aug, **kwargs)
  try:
    import tensorflow_datasets  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise ValueError(f"Unknown dataset '{name}'; built in: {sorted(data_lib.SOURCES)}, "
                     "'folder:PATH'; TFDS datasets need pip install \"compact-flax[data]\"."
                     ) from None
  return TFDSSource(name, config.aug, data_dir=config.get('data_dir') or None,
                    train_split=config.get('train_split') or None,
                    eval_split=config.get('eval_split') or None, **kwargs)
