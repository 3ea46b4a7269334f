"""The official pretrained weights by name: downloaded once, verified, converted once, cached.

    model, variables = compact_flax.load_pretrained('cct_7_3x1_32')            # official URL
    model, variables = compact_flax.load_pretrained('cct_7_3x1_32', 'ckpt.pth') # a local file

`source` may be a URL (http, https, file://), a local `.pth`, or a converted checkpoint directory.
The cache (`$COMPACT_FLAX_CACHE`, default `~/.cache/compact_flax`) holds `downloads/` and
`converted/<name>-<sha256 prefix>/`: the second call converts nothing. A new resolution or class
count is fitted when loading, by `checkpoint.load_model`.
"""

import hashlib
import os
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, Optional, Tuple

from compact_flax import checkpoint
from compact_flax import convert
from compact_flax import models

BASE_URL = 'https://shi-labs.com/projects/cct/checkpoints/'

# Official released weights (official src/cct.py and README): name -> (path, dataset, top-1 %).
PRETRAINED = {
    'cct_7_3x1_32': ('pretrained/cct_7_3x1_32_cifar10_300epochs.pth', 'cifar10', 96.53),
    'cct_7_3x1_32_sine': ('pretrained/cct_7_3x1_32_sine_cifar10_5000epochs.pth', 'cifar10', 98.00),
    'cct_7_3x1_32_c100': ('pretrained/cct_7_3x1_32_cifar100_300epochs.pth', 'cifar100', 80.92),
    'cct_7_3x1_32_sine_c100': ('pretrained/cct_7_3x1_32_sine_cifar100_5000epochs.pth', 'cifar100',
                               82.87),
    'cct_7_7x2_224_sine': ('pretrained/cct_7_7x2_224_flowers102.pth', 'oxford_flowers102', 97.19),
    'cct_14_7x2_224': ('pretrained/cct_14_7x2_224_imagenet.pth', 'imagenet2012', 80.67),
    'cct_14_7x2_384': ('finetuned/cct_14_7x2_384_imagenet.pth', 'imagenet2012', 82.71),
    'cct_14_7x2_384_fl': ('finetuned/cct_14_7x2_384_flowers102.pth', 'oxford_flowers102', 99.76),
}

CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship',
                   'truck')
# Eval transform of each dataset's official config: mean, std, crop_pct (interpolation bicubic).
DATASETS = {
    'cifar10': ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 1.0),
    'cifar100': ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761), 1.0),
    'oxford_flowers102': ((0.4353, 0.3773, 0.2872), (0.2966, 0.2455, 0.2698), 1.0),
    'imagenet2012': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 0.9),
}


def class_names(dataset: str, num_classes: int):
  """Readable names where this package knows them (CIFAR-10, or a locally prepared TFDS
  dataset); otherwise 'class N'."""
  if dataset == 'cifar10' and num_classes == 10:
    return list(CIFAR10_CLASSES)
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    builder = tfds.builder(dataset)
    if builder.is_prepared():
      names = builder.info.features['label'].names
      if len(names) == num_classes:
        return list(names)
  except Exception:  # pylint: disable=broad-except
    pass
  return [f'class {i}' for i in range(num_classes)]


def data_spec(dataset: str, num_classes: int) -> Dict[str, Any]:
  mean, std, crop_pct = DATASETS.get(dataset, DATASETS['imagenet2012'])
  return {'dataset': dataset, 'class_names': class_names(dataset, num_classes), 'mean': list(mean),
          'std': list(std), 'crop_pct': crop_pct, 'interpolation': 'bicubic'}


def default_dataset(name: str) -> str:
  """The dataset `name`'s weights were trained on: the zoo's record, else by resolution (the
  official *_32 variants are CIFAR models, the rest ImageNet-style)."""
  if name in PRETRAINED:
    return PRETRAINED[name][1]
  return 'cifar10' if name.endswith('_32') or '_32_' in name else 'imagenet2012'


def cache_dir() -> str:
  return os.environ.get('COMPACT_FLAX_CACHE',
                        os.path.join(os.path.expanduser('~'), '.cache', 'compact_flax'))


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


def download(url: str, directory: str) -> str:
  """The file at `url` in `directory` (downloaded once, with a progress bar, written atomically)."""
  parsed = urllib.parse.urlparse(url)
  if parsed.scheme == 'file':
    return urllib.request.url2pathname(parsed.path)
  target = os.path.join(directory, os.path.basename(parsed.path))
  if os.path.exists(target):
    return target
  os.makedirs(directory, exist_ok=True)
  part = target + '.part'
  try:
    with urllib.request.urlopen(url, timeout=30) as response, open(part, 'wb') as out:
      total, done = int(response.headers.get('Content-Length') or 0), 0
      for block in iter(lambda: response.read(1 << 20), b''):
        out.write(block)
        done += len(block)
        if total:
          bar = '#' * int(30 * done / total)
          print(f'\r{os.path.basename(target)} [{bar:<30}] {done / 2**20:.1f}/{total / 2**20:.1f} '
                f'MiB', end='', file=sys.stderr, flush=True)
      print(file=sys.stderr)
    if total and done != total:
      raise OSError(f'got {done} of {total} bytes')
  except (urllib.error.URLError, OSError, ValueError) as e:
    if os.path.exists(part):
      os.remove(part)
    raise RuntimeError(
        f'Cannot download {url} ({e}). Fetch the file on a machine with network access and pass '
        f"it: load_pretrained(name, source='/path/{os.path.basename(target)}') or --source.") from None
  os.replace(part, target)
  return target


def pretrained_dir(name: str, source: Optional[str] = None, *,
                   dataset: Optional[str] = None) -> str:
  """A converted checkpoint directory holding the weights of `name` (the official ones, or those
  at `source`): downloaded and converted once, then served from the cache. A cached conversion
  that fails its integrity check, or a cached download that no longer reads, is made again.

  `source` may be a URL, a local `.pth`, or a converted directory (returned as it is).
  """
  models.model_kwargs(name)  # unknown names fail here, with suggestions
  if source is None:
    if name not in PRETRAINED:
      raise ValueError(f"'{name}' has no published weights. Names that do: "
                       f'{", ".join(PRETRAINED)}; or pass source= a .pth file or URL.')
    source = BASE_URL + PRETRAINED[name][0]
  if os.path.isdir(source):
    return source
  downloads = os.path.join(cache_dir(), 'downloads')
  for attempt in range(2):
    path = source if os.path.exists(source) else download(source, downloads)
    if not os.path.exists(path):
      raise FileNotFoundError(f'{source}: no such file.')
    try:
      return _converted(name, path, dataset or default_dataset(name))
    except convert.CheckpointError:
      if attempt or os.path.dirname(path) != downloads:
        raise
      print(f'The cached download {path} cannot be read; downloading it again.', file=sys.stderr)
      os.remove(path)
  raise AssertionError('unreachable')


def _converted(name: str, path: str, dataset: str) -> str:
  """The cache's conversion of the `.pth` at `path`, made (again) unless an intact one exists."""
  converted = os.path.join(cache_dir(), 'converted', f'{name}-{_sha256(path)[:16]}')
  if os.path.isdir(converted):
    try:
      checkpoint.verify_checkpoint(converted)
      return converted
    except Exception as e:  # pylint: disable=broad-except
      print(f'The cached conversion {converted} is damaged ({checkpoint.short_reason(e)}); '
            'converting again.', file=sys.stderr)
      shutil.rmtree(converted)
  model, variables = convert.load_torch_checkpoint(path, name)
  kwargs = {k: getattr(model, k) for k in ('img_size', 'num_classes', 'positional_embedding')}
  tmp = converted + '.tmp'
  shutil.rmtree(tmp, ignore_errors=True)
  checkpoint.save_model(tmp, name, kwargs, variables, data=data_spec(dataset, model.num_classes))
  os.replace(tmp, converted)
  return converted


def load_pretrained(name: str, source: Optional[str] = None, *, img_size=None,
                    num_classes: Optional[int] = None, dataset: Optional[str] = None,
                    **overrides) -> Tuple[Any, Dict[str, Any]]:
  """(model, variables) with the official weights of `name`, or those at `source`.

  `img_size` and `num_classes` refit the weights as `checkpoint.load_model` does (resized
  positional embedding, new head). Other overrides must keep parameter shapes (`dtype`, ...).
  """
  return checkpoint.load_model(pretrained_dir(name, source, dataset=dataset), img_size=img_size,
                               num_classes=num_classes, **overrides)
