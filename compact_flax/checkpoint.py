"""Self-describing model checkpoints: weights plus the model name and constructor arguments.

A directory written by `save_model` (the converter's output) holds two Orbax items, `variables`
and `model` (JSON: `{"model": NAME, "model_kwargs": {...}}`), so one call rebuilds it:

    model, variables = compact_flax.load_model('converted/cct_7_3x1_32')
"""

import json
import os
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from compact_flax import models


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


def resolve(directory: str) -> str:
  """The checkpoint directory meant by `directory`.

  A converted directory or a training step directory is itself; a training workdir means its best
  checkpoint (else its latest); a manager directory (`WORKDIR/checkpoints/last`) its latest step.
  """
  directory = os.path.abspath(directory)
  if os.path.exists(os.path.join(directory, 'model', 'metadata')):
    return directory
  for sub in ('checkpoints/best', 'checkpoints/last', ''):
    root = os.path.join(directory, sub)
    steps = [int(d) for d in os.listdir(root) if d.isdigit()] if os.path.isdir(root) else []
    if steps:
      return os.path.join(root, str(max(steps)))
  raise FileNotFoundError(
      f'{directory} is not a compact-flax checkpoint: no model/metadata inside, and no saved '
      'steps under it. Make one with convert_torch_weights.py or train_main.py.')


def read_spec(directory: str) -> Dict[str, Any]:
  with open(os.path.join(resolve(directory), 'model', 'metadata')) as f:
    return json.load(f)


def load_params(directory: str, *, use_ema: bool = False) -> Tuple[Dict[str, Any], Any]:
  """(model spec, params) from a converted directory, a training checkpoint or a workdir."""
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


def load_model(directory: str, *, use_ema: bool = False, **overrides) -> Tuple[Any, Dict[str, Any]]:
  """(model, variables) from a converted directory, a training checkpoint or a training workdir.

  `overrides` change constructor arguments that do not change parameter shapes (`dtype`,
  `dropout`, ...); use the converter or `config.init_from` for a new resolution or class count.
  """
  spec, params = load_params(directory, use_ema=use_ema)
  return build_from_spec(spec, **overrides), {'params': params}
