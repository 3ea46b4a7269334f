"""Self-describing model checkpoints: weights plus the model name and constructor arguments.

A directory written by `save_model` (the converter's output) holds two Orbax items, `variables`
and `model` (JSON: `{"model": NAME, "model_kwargs": {...}}`), so one call rebuilds it:

    model, variables = compact_flax.load_model('converted/cct_7_3x1_32')
"""

import json
import os
from typing import Any, Dict, Mapping, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from compact_flax import models


def model_spec(model_name: str, model_kwargs: Mapping[str, Any]) -> Dict[str, Any]:
  """The JSON description stored beside the weights; dtypes are stored by name."""
  kwargs = {}
  for k, v in model_kwargs.items():
    if k in ('dtype', 'param_dtype'):
      v = None if v is None else np.dtype(v).name
    elif isinstance(v, tuple):
      v = list(v)
    kwargs[k] = v
  return {'model': model_name, 'model_kwargs': kwargs}


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
               *, force: bool = False) -> str:
  """Writes `variables` and the model description to `directory` (Orbax, written atomically)."""
  directory = os.path.abspath(directory)
  if os.path.exists(directory) and os.listdir(directory) and not force:
    raise FileExistsError(f'{directory} exists and is not empty; choose a new directory or pass '
                          'force=True (--force) to replace it.')
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    ckptr.save(directory, ocp.args.Composite(
        variables=ocp.args.StandardSave(jax.device_get(variables)),
        model=ocp.args.JsonSave(model_spec(model_name, model_kwargs))), force=True)
  return directory


def read_spec(directory: str) -> Dict[str, Any]:
  path = os.path.join(directory, 'model', 'metadata')
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'{directory} is not a compact-flax model checkpoint (no model/metadata inside). Make one '
        'with convert_torch_weights.py or point at a training workdir\'s checkpoint.')
  with open(path) as f:
    return json.load(f)


def load_model(directory: str, **overrides) -> Tuple[Any, Dict[str, Any]]:
  """(model, variables) from a directory written by `save_model`.

  `overrides` change constructor arguments that do not change parameter shapes (`dtype`,
  `dropout`, ...); use the converter for a new resolution or class count.
  """
  directory = os.path.abspath(directory)
  spec = read_spec(directory)
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    restored = ckptr.restore(directory, ocp.args.Composite(variables=ocp.args.StandardRestore()))
  return build_from_spec(spec, **overrides), restored['variables']
