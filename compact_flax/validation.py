"""Every config value checked before anything starts: one line per problem, close names suggested.

`problems(config, num_devices)` returns what is wrong (empty when the config can run);
`unknown_overrides(config, names)` names `--config.x` flags that match no field.
"""

import difflib
import numbers
import re
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from compact_flax import augment
from compact_flax import models
from compact_flax import precision


def _int(low: int, high: Optional[int] = None):
  def check(v):
    ok = isinstance(v, numbers.Integral) and not isinstance(v, bool)
    ok = ok and v >= low and (high is None or v <= high)
    return ok, f'an integer >= {low}' + (f' and <= {high}' if high is not None else '')
  return check


def _float(low: float, high: Optional[float] = None, *, low_open: bool = False,
           high_open: bool = False):
  def check(v):
    ok = isinstance(v, numbers.Real) and not isinstance(v, bool)
    ok = ok and (v > low if low_open else v >= low)
    ok = ok and (high is None or (v < high if high_open else v <= high))
    lo = f'> {low}' if low_open else f'>= {low}'
    hi = '' if high is None else (f' and < {high}' if high_open else f' and <= {high}')
    return ok, f'a number {lo}{hi}'
  return check


def _one_of(*choices):
  def check(v):
    return v in choices, f'one of {list(choices)}'
  return check


def _bool(v):
  return isinstance(v, bool), 'True or False'


def _str(v):
  return isinstance(v, str), 'a string'


def _range(low: float, high: Optional[float]):
  """A (min, max) pair within [low, high] with min <= max."""
  def check(v):
    ok = isinstance(v, (tuple, list)) and len(v) == 2 and all(
        isinstance(x, numbers.Real) and not isinstance(x, bool) for x in v)
    ok = ok and low < v[0] <= v[1] and (high is None or v[1] <= high)
    return ok, f'a pair (min, max) with {low} < min <= max' + (f' <= {high}' if high else '')
  return check


def _size(v):
  ok = (isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0) or (
      isinstance(v, (tuple, list)) and len(v) == 2 and all(
          isinstance(x, numbers.Integral) and x > 0 for x in v))
  return ok, 'a positive integer or a (height, width) pair'


def _step_range(v):
  ok = v == '' or (isinstance(v, str) and re.fullmatch(r'\d+:\d+', v) is not None
                   and int(v.split(':')[0]) < int(v.split(':')[1]))
  return ok, "'' (off) or 'START:STOP', two step numbers with START < STOP"


def _on_device(v):
  ok = v is True or v is False or v in ('auto', 'True', 'False', 'true', 'false')
  return ok, "True, False or 'auto'"


def _triple(positive: bool):
  def check(v):
    ok = isinstance(v, (tuple, list)) and len(v) >= 1 and all(
        isinstance(x, numbers.Real) and (x > 0 if positive else True) for x in v)
    return ok, 'a tuple of per-channel numbers' + (' > 0' if positive else '')
  return check


def _auto_augment(v):
  if not isinstance(v, str):
    return False, "a timm RandAugment string such as 'rand-m9-mstd0.5-inc1', or ''"
  try:
    if v:
      augment.parse_rand_augment(v)
  except ValueError as e:
    return False, f"a RandAugment string timm's inc1 set understands ({e})"
  return True, ''


CHECKS: Dict[str, Callable[[Any], Tuple[bool, str]]] = {
    'model': _str, 'dtype': _one_of(*precision.CHOICES), 'dataset': _str, 'data_dir': _str,
    'train_split': _str, 'eval_split': _str, 'seed': _int(0),
    'num_epochs': _int(1), 'cooldown_epochs': _int(0), 'batch_size': _int(1),
    'eval_batch_size': _int(1), 'grad_accum_steps': _int(1),
    'learning_rate': _float(0, low_open=True), 'lr_step_unit': _one_of('epoch', 'step'),
    'warmup_epochs': _int(0), 'warmup_lr': _float(0),
    'min_lr': _float(0), 'weight_decay': _float(0), 'adam_b1': _float(0, 1, high_open=True),
    'adam_b2': _float(0, 1, high_open=True), 'adam_eps': _float(0, low_open=True),
    'grad_clip_norm': _float(0), 'label_smoothing': _float(0, 1, high_open=True),
    'ema_decay': _float(0, 1, high_open=True), 'loss_scale_init': _float(1),
    'loss_scale_growth_interval': _int(1),
    'aug.img_size': _size, 'aug.mean': _triple(False), 'aug.std': _triple(True),
    'aug.crop_pct': _float(0, 1, low_open=True), 'aug.interpolation': _one_of('bilinear', 'bicubic'),
    'aug.scale': _range(0, 1), 'aug.ratio': _range(0, None),
    'aug.train_interpolation': _one_of('random', 'bilinear', 'bicubic'), 'aug.hflip': _float(0, 1),
    'aug.auto_augment': _auto_augment, 'aug.color_jitter': _float(0), 'aug.reprob': _float(0, 1),
    'aug.remode': _one_of('pixel', 'rand', 'const'), 'aug.mixup': _float(0), 'aug.cutmix': _float(0),
    'aug.mixup_prob': _float(0, 1), 'aug.mixup_switch_prob': _float(0, 1),
    'aug.mixup_mode': _one_of('batch', 'elem', 'pair'), 'aug.mixup_off_epoch': _int(0), 'aug.on_device': _on_device,
    'profile_steps': _step_range, 'log_every_steps': _int(1), 'eval_every_epochs': _int(1), 'checkpoint_every_steps': _int(1),
    'keep_checkpoints': _int(1), 'checkpoint_async': _bool, 'init_from': _str, 'eval_only': _bool,
    'freeze_embedding': _bool, 'dataset_kwargs.seq_len': _int(1), 'dataset_kwargs.min_freq': _int(1),
}
REQUIRED = ('model', 'model_kwargs', 'dataset', 'num_epochs', 'batch_size', 'seed',
            'learning_rate', 'weight_decay', 'warmup_epochs', 'warmup_lr', 'min_lr',
            'cooldown_epochs', 'init_from', 'eval_only')


_MISSING = object()


def _get(config, dotted: str):
  node = config
  for part in dotted.split('.'):
    if part not in node:
      return _MISSING
    node = node[part]
  return node


def model_kwargs(config) -> Dict[str, Any]:
  """`config.model_kwargs` without the fields left unset (None)."""
  return {k: v for k, v in dict(config.model_kwargs).items() if v is not None}


def problems(config, num_devices: int) -> List[str]:
  """What stops `config` from running on `num_devices` devices, one line each (empty: nothing)."""
  missing = [f for f in REQUIRED if f not in config]
  if missing:
    return [f'config lacks {missing}; start from configs/common.py.']
  out = []
  for name, check in CHECKS.items():
    value = _get(config, name)
    if value is _MISSING:
      continue
    ok, expected = check(value)
    if not ok:
      out.append(f'config.{name} is {value!r}; it must be {expected}.')
  if config.model not in models.VARIANTS:
    try:
      models.model_kwargs(config.model)
    except ValueError as e:
      out.append(str(e))
  else:
    try:
      models.model_kwargs(config.model, **model_kwargs(config))
    except TypeError as e:
      out.append(f'config.model_kwargs: {e}')
  if out:
    return out
  if config.batch_size % (num_devices * config.grad_accum_steps):
    out.append(f'batch_size {config.batch_size} does not divide over {num_devices} devices x '
               f'{config.grad_accum_steps} accumulation steps: make it a multiple of '
               f'{num_devices * config.grad_accum_steps}.')
  if config.get('aug') and config.aug.get('mixup_mode') == 'pair' and config.batch_size % 2:
    out.append(f"aug.mixup_mode 'pair' mixes images in pairs: batch_size {config.batch_size} must "
               'be even.')
  if config.eval_batch_size % num_devices:
    out.append(f'eval_batch_size {config.eval_batch_size} does not divide over {num_devices} '
               'devices.')
  return out


def _fields(config, prefix: str = '') -> Iterable[str]:
  for k, v in config.items():
    name = f'{prefix}{k}'
    yield name
    if hasattr(v, 'items'):
      yield from _fields(v, name + '.')


def unknown_overrides(config, names: Iterable[str]) -> List[str]:
  """One line for each `--config.NAME` override that names no field of `config`."""
  known = list(_fields(config))
  out = []
  for name in names:
    if name not in known:
      close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
      hint = f' Did you mean {", ".join("--config." + c for c in close)}?' if close else ''
      out.append(f"--config.{name}: the config has no field '{name}'.{hint}")
  return out
