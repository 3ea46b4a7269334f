"""Strict loading of weights into a model, shared by the converter and `init_from`.

The one place that resizes a learnable positional embedding to a new resolution, drops a table the
model regenerates (sine), re-initialises a head for a new class count, and names whatever is
missing, extra or mis-shaped. Nothing is loaded partially.
"""

import logging
import re
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger(__name__)

PE_PATH = 'classifier/positional_emb'
HEAD_PATHS = ('classifier/fc/kernel', 'classifier/fc/bias')


_LAYER = re.compile(r'^(.*)/blocks_(\d+)/(.*)$')
_SCANNED = re.compile(r'^(.*)/blocks/(.*)$')


def match_layer_layout(loaded: Mapping[str, Any], target) -> Dict[str, Any]:
  """Flat weights in `target`'s encoder layout: per-layer weights (`blocks_0`, `blocks_1`, ...)
  stacked into a scanned model's `blocks`, or a scanned checkpoint's `blocks` split per layer."""
  loaded, stacks = dict(loaded), {}
  for path in list(loaded):
    m = _LAYER.match(path)
    if m and path not in target and f'{m[1]}/blocks/{m[3]}' in target:
      stacks.setdefault(f'{m[1]}/blocks/{m[3]}', {})[int(m[2])] = loaded.pop(path)
  for path, layers in stacks.items():
    loaded[path] = np.stack([np.asarray(layers[i]) for i in sorted(layers)])
  for path in list(loaded):
    m = _SCANNED.match(path)
    if m and path not in target and f'{m[1]}/blocks_0/{m[2]}' in target:
      for i, value in enumerate(loaded.pop(path)):
        loaded[f'{m[1]}/blocks_{i}/{m[2]}'] = value
  return loaded


class CheckpointError(ValueError):
  """Weights that cannot be loaded into the requested model; the message says why."""


def image_shape(model) -> Tuple[int, int, int]:
  h, w = (model.img_size,) * 2 if isinstance(model.img_size, int) else model.img_size
  return h, w, model.n_input_channels


def input_spec(model) -> Tuple[Tuple[int, ...], Any]:
  """One example's shape and dtype: an (H, W, C) float image, or a text model's word ids."""
  if hasattr(model, 'input_spec'):
    return model.input_spec()
  return image_shape(model), jnp.float32


def init_variables(model, seed: int = 0, *, abstract: bool = False):
  """The model's initial variables (or their shapes) for a batch of one example."""
  shape, dtype = input_spec(model)
  init = lambda: model.init(jax.random.key(seed), jnp.zeros((1,) + shape, dtype))
  return jax.eval_shape(init) if abstract else jax.jit(init)()


def resize_positional_embedding(pe: np.ndarray, grid: Tuple[int, int], num_prefix: int = 0):
  """The official loader's resize: the token grid bilinearly, align_corners=False, no antialias.

  `pe` is (1, prefix + g*g, dim) with a square grid; `num_prefix` tokens (ViT-Lite's class token)
  are kept aside. Returns (1, prefix + rows*cols, dim).
  """
  prefix, tokens = pe[:, :num_prefix], pe[0, num_prefix:]
  g = int(round(np.sqrt(tokens.shape[0])))
  if g * g != tokens.shape[0]:
    raise CheckpointError(f'Cannot resize a positional embedding of {tokens.shape[0]} tokens: '
                          'not a square grid.')

  def weights(n_in, n_out):  # PyTorch's upsample_bilinear2d rule (float32 indices), as a matrix
    scale = np.float32(n_in) / np.float32(n_out)
    src = np.maximum(scale * (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5),
                     np.float32(0))
    i0 = np.minimum(src.astype(int), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = (src - i0.astype(np.float32)).astype(np.float64)
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), i0), 1 - lam)
    np.add.at(m, (np.arange(n_out), i1), lam)
    return m

  grid_pe = tokens.reshape(g, g, -1).astype(np.float64)
  out = np.einsum('rh,hwd,cw->rcd', weights(g, grid[0]), grid_pe, weights(g, grid[1]))
  out = out.reshape(1, grid[0] * grid[1], -1).astype(pe.dtype)
  return np.concatenate([prefix, out], axis=1)


def fit_params(model, params, *, seed: int = 0, hint: str = '') -> Dict[str, Any]:
  """A Flax params tree (converted or trained) -> `{'params': ...}` for `model`: the head is
  re-initialised when the class count differs, a learnable PE resized at a new resolution."""
  flat = flax.traverse_util.flatten_dict(params, sep='/')
  head = flat.get(HEAD_PATHS[1])
  return merge_params(model, flat, seed=seed, hint=hint,
                      new_head=head is not None and head.shape[0] != model.num_classes)


def _raise_problems(target, loaded, fresh, unexpected, describe, source_shape, hint):
  """CheckpointError naming every mismatched, missing and extra key (at most six of each)."""
  unexpected = list(unexpected) + [describe(p) for p in loaded if p not in target]
  mismatched = [f'{describe(p)}: checkpoint {source_shape(p, v.shape)}, model '
                f'{source_shape(p, target[p].shape)}'
                for p, v in loaded.items() if p in target and v.shape != target[p].shape]
  missing = sorted(set(target) - set(loaded) - fresh)
  if missing or unexpected or mismatched:
    lines = [f'Cannot load these weights into the model: {hint}'.rstrip(': ')]
    for title, items in (('Shape mismatch', mismatched), ('Missing from the checkpoint', missing),
                         ('Not in the model', sorted(unexpected))):
      if items:
        more = f' ... and {len(items) - 6} more' if len(items) > 6 else ''
        lines.append(f'{title} ({len(items)}): ' + '; '.join(items[:6]) + more)
    raise CheckpointError('\n'.join(lines))


def check_fits(model, params, *, hint: str = ''):
  """Raises CheckpointError unless `params` has exactly `model`'s keys and shapes."""
  target = flax.traverse_util.flatten_dict(init_variables(model, abstract=True)['params'], sep='/')
  loaded = match_layer_layout(flax.traverse_util.flatten_dict(params, sep='/'), target)
  _raise_problems(target, loaded, set(), (), lambda p: p, lambda p, s: tuple(s), hint)


def merge_params(model, loaded: Mapping[str, Any], *, new_head: bool = False, seed: int = 0,
                 names: Optional[Mapping[str, Tuple[str, Callable]]] = None,
                 unexpected: Sequence[str] = (), hint: str = '') -> Dict[str, Any]:
  """Flat `{'a/b/kernel': array}` weights -> `{'params': ...}` for `model`, strictly.

  `new_head` keeps the model's fresh `classifier/fc`; `names` maps a path to the source's key and a
  function giving a shape in the source's layout, for messages; `unexpected` are source keys that
  had no path at all.
  """
  target = flax.traverse_util.flatten_dict(init_variables(model, seed, abstract=True)['params'],
                                           sep='/')
  loaded = match_layer_layout(loaded, target)
  describe = lambda path: names[path][0] if names and path in names else path
  source_shape = lambda path, shape: tuple(names[path][1](shape) if names and path in names
                                           else shape)
  if PE_PATH in loaded and PE_PATH not in target:
    loaded.pop(PE_PATH)  # a sine model regenerates its table; 'none' has none
  elif PE_PATH in loaded:
    have, want = loaded[PE_PATH].shape, target[PE_PATH].shape
    if have[1] != want[1] and have[2] == want[2]:
      log.info('Resizing the positional embedding from %d to %d tokens.', have[1], want[1])
      loaded[PE_PATH] = resize_positional_embedding(np.asarray(loaded[PE_PATH]), model.grid_size(),
                                                    num_prefix=0 if model.seq_pool else 1)
  fresh = set(HEAD_PATHS) if new_head else set()
  if new_head and HEAD_PATHS[1] in loaded:
    log.warning('Checkpoint head has %d classes, model %d: classifier.fc re-initialised.',
                loaded[HEAD_PATHS[1]].shape[0], model.num_classes)
  for path in fresh:
    loaded.pop(path, None)

  _raise_problems(target, loaded, fresh, unexpected, describe, source_shape, hint)
  params = {p: jnp.asarray(loaded[p], dtype=model.param_dtype) for p in target if p in loaded}
  if fresh:
    init = flax.traverse_util.flatten_dict(init_variables(model, seed)['params'], sep='/')
    params.update({p: init[p] for p in fresh})
  return {'params': flax.traverse_util.unflatten_dict(params, sep='/')}
