"""Model checkpoints on disk and the one weight loader, `load_model`.

A converted directory (`save_model`, the converter's output) holds Orbax items `variables`, `model`
(JSON: `{"model": NAME, "model_kwargs": {...}, "data": {...}}`) and `integrity` (a CRC-32 of every
array, checked when read). A training run keeps its steps under `WORKDIR/checkpoints/<step>`
(`train_checkpoints.py`) with `state` in place of `variables`. `load_model` reads any of them, or
a training workdir, whose best intact step it picks:

    model, variables = compact_flax.load_model('converted/cct_7_3x1_32')
    model, variables = compact_flax.load_model('/tmp/digits_cct', num_classes=5)  # new head
"""

import json
import logging
import os
import zlib
from typing import Any, Dict, List, Mapping, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from compact_flax import merge
from compact_flax import models

CheckpointError = merge.CheckpointError
log = logging.getLogger(__name__)


def model_spec(model_name: str, model_kwargs: Mapping[str, Any],
               data: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
  """The JSON description stored beside the weights; dtypes are stored by name."""
  kwargs = {}
  for k, v in model_kwargs.items():
    if k in ('dtype', 'param_dtype'):
      v = None if v is None else np.dtype(v).name
    elif isinstance(v, tuple):
      v = list(v)
    kwargs[k] = v
  spec = {'model': model_name, 'model_kwargs': kwargs}
  if data is not None:
    spec['data'] = dict(data)
  return spec


def build_from_spec(spec: Mapping[str, Any], **overrides):
  """The model a `model_spec` describes, with `overrides` applied."""
  kwargs = dict(spec['model_kwargs'])
  for k in ('dtype', 'param_dtype'):
    if kwargs.get(k) is not None:
      kwargs[k] = np.dtype(kwargs[k]) if kwargs[k] != 'bfloat16' else jax.numpy.bfloat16
  if isinstance(kwargs.get('img_size'), list):
    kwargs['img_size'] = tuple(kwargs['img_size'])
  kwargs.update(overrides)
  return models.create_model(spec['model'], **kwargs)


# --- Integrity -------------------------------------------------------------------------------------

def fingerprint(tree) -> Dict[str, str]:
  """CRC-32 of every array's bytes, by path: written with a checkpoint, checked when it is read.

  A replicated jax.Array is read from this process's copy.
  """
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if isinstance(leaf, jax.Array):
      leaf = leaf.addressable_data(0)
    data = np.ascontiguousarray(np.asarray(leaf)).reshape(-1).view(np.uint8)
    out[jax.tree_util.keystr(path, simple=True, separator='/')] = f'{zlib.crc32(data):08x}'
  return out


def verify(tree, expected: Optional[Mapping[str, str]], where: str):
  """Raises CheckpointError naming the first array of `tree` whose bytes differ from when it was
  saved. `expected` may cover more than `tree` (the whole train state when only params are read);
  None: written before checkpoints carried checksums."""
  if expected is None:
    return
  actual = fingerprint(tree)
  prefixes = tuple(f'{k}/' for k in tree) if isinstance(tree, Mapping) else ('',)
  expected = {k: v for k, v in expected.items() if k.startswith(prefixes)}
  for key in sorted(set(expected) | set(actual)):
    if expected.get(key) != actual.get(key):
      raise CheckpointError(f'{where} failed its integrity check: {key or "the array"} is not what '
                            'was saved (the files were changed or damaged after writing).')


def save_model(directory: str, model_name: str, model_kwargs: Mapping[str, Any], variables,
               *, force: bool = False, data: Optional[Mapping[str, Any]] = None) -> str:
  """Writes `variables` and the model description to `directory` (Orbax, written atomically).

  `data` describes what the weights were trained on (dataset, class_names, mean, std, crop_pct,
  interpolation), for prediction.
  """
  directory = os.path.abspath(directory)
  if os.path.exists(directory) and os.listdir(directory) and not force:
    raise FileExistsError(f'{directory} exists and is not empty; choose a new directory or pass '
                          'force=True (--force) to replace it.')
  variables = jax.device_get(variables)
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    ckptr.save(directory, ocp.args.Composite(
        variables=ocp.args.StandardSave(variables),
        model=ocp.args.JsonSave(model_spec(model_name, model_kwargs, data)),
        integrity=ocp.args.JsonSave({'variables': fingerprint(variables)})), force=True)
  return directory


# --- Finding a checkpoint ----------------------------------------------------------------------------

def steps(root: str) -> List[int]:
  return sorted(int(d) for d in os.listdir(root) if d.isdigit()) if os.path.isdir(root) else []


def short_reason(e: BaseException) -> str:
  """An exception in one readable line: tensorstore's specs dropped, long messages cut."""
  text = str(e).splitlines()[0] if str(e) else 'no details'
  text = text.split(' [tensorstore_spec')[0]
  return f'{type(e).__name__}: ' + (text if len(text) <= 240 else '...' + text[-240:])


def read_json(path: str):
  """A small JSON file of a checkpoint."""
  with open(path) as f:
    return json.load(f)


def step_problem(step_dir: str) -> str:
  """Why a saved step's small files cannot be read ('' when they can). Arrays are checked when
  they are restored."""
  files = ['_CHECKPOINT_METADATA', 'model/metadata', 'metrics/metrics', 'integrity/metadata']
  for name in files:
    path = os.path.join(step_dir, name)
    if name != files[0] and not os.path.exists(path):
      continue
    try:
      content = read_json(path)
    except (OSError, ValueError) as e:
      return f'{name} is unreadable ({type(e).__name__})'
    if name == 'model/metadata' and not (isinstance(content, dict) and 'model' in content):
      return f'{name} holds no model description'
  return ''


def _metric(step_dir: str) -> Optional[float]:
  path = os.path.join(step_dir, 'metrics', 'metrics')
  if os.path.exists(path):
    value = read_json(path).get('eval_top1')
    return value if isinstance(value, (int, float)) else None
  return None


def candidates(directory: str) -> List[str]:
  """The checkpoint directories `directory` may mean, most wanted first.

  A converted directory or a training step is itself. A training workdir, or its `checkpoints/`,
  offers its intact steps: the best by eval top-1, then the newest to the oldest. Workdirs with the
  earlier `checkpoints/best` + `checkpoints/last` layout offer best, then last. Damaged steps are
  skipped with a warning.
  """
  directory = os.path.abspath(directory)
  if os.path.exists(os.path.join(directory, 'model', 'metadata')):
    return [directory]
  found = []
  for sub in ('checkpoints', '', 'checkpoints/best', 'checkpoints/last'):
    root = os.path.join(directory, sub) if sub else directory
    intact = []
    for step in reversed(steps(root)):
      step_dir = os.path.join(root, str(step))
      problem = step_problem(step_dir)
      if problem:
        log.warning('Skipping the damaged checkpoint %s: %s.', step_dir, problem)
      else:
        intact.append(step_dir)
    scored = [(m, d) for d in intact for m in [_metric(d)] if m is not None]
    best = [max(scored, key=lambda x: x[0])[1]] if scored else []
    found += best + [d for d in intact if d not in best and d not in found]
    if found and sub in ('checkpoints', ''):
      break
  if not found:
    raise FileNotFoundError(
        f'{directory} is not a compact-flax checkpoint: no model/metadata inside, and no intact '
        'saved steps under it. Make one with convert_torch_weights.py or train_main.py.')
  return found


def resolve(directory: str) -> str:
  """The checkpoint directory `directory` means (the first of `candidates`)."""
  return candidates(directory)[0]


def read_spec(directory: str) -> Dict[str, Any]:
  """The model description stored with a checkpoint (see `model_spec`)."""
  path = os.path.join(resolve(directory), 'model', 'metadata')
  try:
    return read_json(path)
  except ValueError as e:
    raise CheckpointError(f'{path} is damaged ({e}).') from None


# --- Loading -------------------------------------------------------------------------------------

def _restore_params(directory: str, use_ema: bool):
  """(spec, params) of one checkpoint directory, verified against its checksums. Arrays come
  onto this process's first device, whatever mesh or hosts wrote them."""
  item = 'variables' if os.path.isdir(os.path.join(directory, 'variables')) else 'state'
  try:
    spec = read_json(os.path.join(directory, 'model', 'metadata'))
    handler = ocp.CompositeCheckpointHandler(**{item: ocp.StandardCheckpointHandler()})
    with ocp.Checkpointer(handler) as ckptr:
      local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=local),
                            ckptr.metadata(directory).item_metadata[item])
      tree = ckptr.restore(directory, ocp.args.Composite(
          **{item: ocp.args.StandardRestore(target)}))[item]
    sums = (read_json(os.path.join(directory, 'integrity', 'metadata')).get(item)
            if os.path.exists(os.path.join(directory, 'integrity')) else None)
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f'Cannot read the checkpoint at {directory} ({short_reason(e)}).'
                          ) from None
  key = 'ema_params' if use_ema and item == 'state' else 'params'
  if tree.get(key) is None:
    raise ValueError(f'{directory} has no EMA weights (the run had ema_decay 0).')
  verify({key: tree[key]}, sums, directory)
  return spec, tree[key]


def verify_checkpoint(directory: str):
  """Reads every array of a converted or step directory and checks it against its checksums;
  CheckpointError (or FileNotFoundError) says what is wrong."""
  _restore_params(resolve(directory), use_ema=False)


def load_params(directory: str, *, use_ema: bool = False) -> Tuple[Dict[str, Any], Any]:
  """(model spec, params) as stored: a converted directory, a training checkpoint or a workdir.

  In a workdir, a step that fails to load or to verify is skipped, with a warning, for the next.
  """
  options = candidates(directory)
  for i, path in enumerate(options):
    try:
      return _restore_params(path, use_ema)
    except CheckpointError as e:
      if i + 1 == len(options):
        raise
      log.warning('%s Trying %s instead.', e, options[i + 1])
  raise AssertionError('unreachable')


def load_model(directory: str, *, img_size=None, num_classes: Optional[int] = None,
               use_ema: bool = False, seed: int = 0, **overrides) -> Tuple[Any, Dict[str, Any]]:
  """(model, variables) from a converted directory, a training checkpoint or a training workdir.

  The weights are checked strictly against the model. A new `img_size` resizes a learnable
  positional embedding as the official loader does (a sine table is regenerated); a new
  `num_classes` re-initialises the head (with `seed`). Other `overrides` must keep parameter
  shapes (`dtype`, `dropout`, ...).
  """
  spec, params = load_params(directory, use_ema=use_ema)
  if img_size is not None:
    overrides['img_size'] = tuple(img_size) if isinstance(img_size, (list, tuple)) else img_size
  if num_classes is not None:
    overrides['num_classes'] = num_classes
  model = build_from_spec(spec, **overrides)
  return model, merge.fit_params(model, params, seed=seed,
                                 hint=f'{directory} holds {spec["model"]}')
