"""On disk: self-describing model checkpoints, the one weight loader, training checkpoints.

A converted directory (`save_model`, the converter's output) holds two Orbax items, `variables`
and `model` (JSON: `{"model": NAME, "model_kwargs": {...}, "data": {...}}`). A training run keeps
its steps under `WORKDIR/checkpoints/<step>` with items `state` and `model` (and Orbax's
`metrics` where the step was evaluated). `load_model` reads either, and a training workdir:

    model, variables = compact_flax.load_model('converted/cct_7_3x1_32')
    model, variables = compact_flax.load_model('/tmp/digits_cct', num_classes=5)  # new head
"""

import json
import os
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from compact_flax import merge
from compact_flax import models

CheckpointError = merge.CheckpointError


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
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    ckptr.save(directory, ocp.args.Composite(
        variables=ocp.args.StandardSave(jax.device_get(variables)),
        model=ocp.args.JsonSave(model_spec(model_name, model_kwargs, data))), force=True)
  return directory


# --- Reading -------------------------------------------------------------------------------------

def _top1(metrics) -> float:
  return metrics['eval_top1']


def _steps(root: str):
  return [int(d) for d in os.listdir(root) if d.isdigit()] if os.path.isdir(root) else []


def _reader(root: str, item_handlers=None) -> ocp.CheckpointManager:
  """A manager that only reads `root`: it never saves, so it never deletes. (Orbax's read_only
  mode would do the same, with a warning on every use.)"""
  options = ocp.CheckpointManagerOptions(create=False, save_interval_steps=0, best_fn=_top1,
                                         best_mode='max')
  return ocp.CheckpointManager(root, item_handlers=item_handlers, options=options)


def _best_or_latest(root: str) -> int:
  """A manager directory's best step by eval top-1, else its latest."""
  with _reader(root) as manager:
    best = manager.best_step()
  return max(_steps(root)) if best is None else best


def resolve(directory: str) -> str:
  """The checkpoint directory meant by `directory`.

  A converted directory or a training step directory is itself; a training workdir or its
  `checkpoints/` means its best evaluated step, else its latest. Workdirs written with separate
  `checkpoints/best` and `checkpoints/last` managers resolve to best, else last.
  """
  directory = os.path.abspath(directory)
  if os.path.exists(os.path.join(directory, 'model', 'metadata')):
    return directory
  for sub in ('checkpoints', '', 'checkpoints/best', 'checkpoints/last'):
    root = os.path.join(directory, sub) if sub else directory
    if _steps(root):
      return os.path.join(root, str(_best_or_latest(root)))
  raise FileNotFoundError(
      f'{directory} is not a compact-flax checkpoint: no model/metadata inside, and no saved '
      'steps under it. Make one with convert_torch_weights.py or train_main.py.')


def read_spec(directory: str) -> Dict[str, Any]:
  """The model description stored with a checkpoint (see `model_spec`)."""
  with open(os.path.join(resolve(directory), 'model', 'metadata')) as f:
    return json.load(f)


def load_params(directory: str, *, use_ema: bool = False) -> Tuple[Dict[str, Any], Any]:
  """(model spec, params) as stored: a converted directory, a training checkpoint or a workdir."""
  directory = resolve(directory)
  spec = read_spec(directory)
  item = 'variables' if os.path.isdir(os.path.join(directory, 'variables')) else 'state'
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    tree = ckptr.restore(directory, ocp.args.Composite(**{item: ocp.args.StandardRestore()}))[item]
  if item == 'variables':
    return spec, tree['params']
  if use_ema and tree.get('ema_params') is None:
    raise ValueError(f'{directory} has no EMA weights (the run had ema_decay 0).')
  return spec, tree['ema_params' if use_ema else 'params']


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


# --- Training checkpoints ------------------------------------------------------------------------

class TrainCheckpoints:
  """`WORKDIR/checkpoints`: one Orbax manager that keeps the latest `keep` steps and the best step
  by eval top-1. Each step holds `state` and `model` (the JSON spec); evaluated steps also hold
  their metrics. Saves may run in the background; only one is in flight at a time."""

  def __init__(self, workdir: str, spec: Mapping[str, Any], *, keep: int, async_save: bool = True):
    self.spec = dict(spec)
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    policies = ocp.checkpoint_managers
    self.manager = ocp.CheckpointManager(
        self.directory, item_handlers=self._handlers(),
        options=ocp.CheckpointManagerOptions(
            create=True, best_fn=_top1, best_mode='max',
            enable_async_checkpointing=async_save,
            preservation_policy=policies.AnyPreservationPolicy([
                policies.LatestN(n=keep),
                policies.BestN(get_metric_fn=_top1, n=1, keep_checkpoints_without_metrics=False),
            ])))

  @staticmethod
  def _handlers():
    return dict(state=ocp.StandardCheckpointHandler(), model=ocp.JsonCheckpointHandler())

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, state, step: int, metrics: Optional[Mapping[str, Any]] = None):
    """Saves `state` as `step` unless that step is saved already; `metrics` rank it for best."""
    if self.manager.latest_step() == step:
      return
    if metrics is not None:
      metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    model=ocp.args.JsonSave(self.spec)),
                      metrics=metrics)

  def restore_latest(self, abstract_state):
    """The latest saved state (shaped and sharded like `abstract_state`), or None.

    A workdir written with separate `checkpoints/last` and `checkpoints/best` managers resumes
    from `last`; new steps are written in the current layout.
    """
    manager, legacy = self.manager, None
    if manager.latest_step() is None and _steps(os.path.join(self.directory, 'last')):
      manager = legacy = _reader(os.path.join(self.directory, 'last'), self._handlers())
    try:
      step = manager.latest_step()
      return None if step is None else self._restore(manager, step, abstract_state)
    finally:
      if legacy is not None:
        legacy.close()

  def _restore(self, manager, step: int, abstract_state):
    where = os.path.join(manager.directory, str(step))
    try:
      stored = manager.restore(step, args=ocp.args.Composite(model=ocp.args.JsonRestore()))['model']
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f'Cannot read the checkpoint at {where} ({type(e).__name__}: {e}); '
                            'move it away to resume from the one before, or use a new '
                            '--workdir.') from None
    ignore = lambda s: (s['model'], {k: v for k, v in s['model_kwargs'].items() if k != 'dtype'})
    if ignore(stored) != ignore(self.spec):
      raise CheckpointError(f'The workdir holds a checkpoint of {ignore(stored)} but the config '
                            f'builds {ignore(self.spec)}: use a new --workdir, or the config it '
                            'was trained with.')
    try:
      return manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state)))['state']
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f'Cannot restore the checkpoint at {where} ({type(e).__name__}: '
                            f'{str(e).splitlines()[0][:200]}); move it away or use a new '
                            '--workdir.') from None

  def close(self):
    """Waits for a save in flight, then releases the manager."""
    self.manager.wait_until_finished()
    self.manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
