"""Official PyTorch checkpoints -> Flax variables: a name table, transpose rules and a strict merge.

    model, variables = load_torch_checkpoint('cct_7_3x1_32_cifar10_300epochs.pth', 'cct_7_3x1_32')
    logits = model.apply(variables, images_nhwc)

PyTorch is needed only here, to read the `.pth` file (`pip install "compact-flax[convert]"`).
"""

import logging
import re
from typing import Any, Dict, Mapping, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

from compact_flax import models
from compact_flax.transformer import sinusoidal_embedding

PE_KEY = 'classifier.positional_emb'
HEAD_KEYS = ('classifier.fc.weight', 'classifier.fc.bias')

# Official state-dict key -> Flax parameter path, and how the tensor is laid out.
#   conv: OIHW -> HWIO; linear: (out, in) -> (in, out); copy: as it is.
NAME_TABLE = (
    (r'tokenizer\.conv_layers\.(\d+)\.0\.weight', 'tokenizer/conv_layers_{0}/kernel', 'conv'),
    (r'tokenizer\.conv_layers\.(\d+)\.0\.bias', 'tokenizer/conv_layers_{0}/bias', 'copy'),
    (r'classifier\.(positional_emb|class_emb)', 'classifier/{0}', 'copy'),
    (r'classifier\.blocks\.(\d+)\.(pre_norm|norm1)\.weight', 'classifier/blocks_{0}/{1}/scale', 'copy'),
    (r'classifier\.blocks\.(\d+)\.(pre_norm|norm1)\.bias', 'classifier/blocks_{0}/{1}/bias', 'copy'),
    (r'classifier\.blocks\.(\d+)\.self_attn\.(qkv|proj)\.weight',
     'classifier/blocks_{0}/self_attn/{1}/kernel', 'linear'),
    (r'classifier\.blocks\.(\d+)\.self_attn\.proj\.bias', 'classifier/blocks_{0}/self_attn/proj/bias',
     'copy'),
    (r'classifier\.blocks\.(\d+)\.(linear1|linear2)\.weight', 'classifier/blocks_{0}/{1}/kernel',
     'linear'),
    (r'classifier\.blocks\.(\d+)\.(linear1|linear2)\.bias', 'classifier/blocks_{0}/{1}/bias', 'copy'),
    (r'classifier\.norm\.weight', 'classifier/norm/scale', 'copy'),
    (r'classifier\.norm\.bias', 'classifier/norm/bias', 'copy'),
    (r'classifier\.(attention_pool|fc)\.weight', 'classifier/{0}/kernel', 'linear'),
    (r'classifier\.(attention_pool|fc)\.bias', 'classifier/{0}/bias', 'copy'),
)
_LAYOUT = {'conv': lambda w: w.transpose(2, 3, 1, 0), 'linear': lambda w: w.T, 'copy': lambda w: w}
_TORCH_SHAPE = {'conv': lambda s: (s[3], s[2], s[0], s[1]), 'linear': lambda s: s[::-1],
                'copy': lambda s: s}
log = logging.getLogger(__name__)


class CheckpointError(ValueError):
  """The checkpoint cannot be converted to the requested model; the message says why."""


def flax_path(key: str) -> Tuple[str, str]:
  """(Flax parameter path, layout rule) of an official key; KeyError for a key not in the table."""
  for pattern, template, layout in NAME_TABLE:
    m = re.fullmatch(pattern, key)
    if m:
      return template.format(*m.groups()), layout
  raise KeyError(key)


def _import_torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('Reading PyTorch checkpoints needs PyTorch: pip install "compact-flax[convert]" '
                      '(or pip install torch).') from e
  return torch


def read_state_dict(path: str, *, use_ema: bool = False) -> Dict[str, np.ndarray]:
  """Reads an official `.pth` state dict or a timm training checkpoint into numpy arrays.

  timm's `train.py` saves `{'state_dict': ..., 'state_dict_ema': ..., 'epoch': ...}`, with a
  `module.` prefix when trained with DDP; `use_ema` picks the EMA weights.
  """
  torch = _import_torch()
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except FileNotFoundError:
    raise
  except Exception as e:  # pickle, zip and torch errors all mean the same to the user
    raise CheckpointError(f'{path} is not a PyTorch checkpoint torch.load can read: {e}') from e
  if isinstance(obj, Mapping):
    wanted = ('state_dict_ema',) if use_ema else ('state_dict', 'model', 'state_dict_ema')
    for key in wanted:
      if isinstance(obj.get(key), Mapping):
        if key == 'state_dict_ema' and not use_ema:
          log.warning('%s holds only EMA weights (state_dict_ema); using them.', path)
        obj = obj[key]
        break
    else:
      if use_ema:
        raise CheckpointError(f'{path} has no state_dict_ema; its keys: {sorted(obj)[:10]}')
  if not isinstance(obj, Mapping) or not obj or not all(
      isinstance(v, torch.Tensor) for v in obj.values()):
    raise CheckpointError(f'{path} holds no state dict of tensors (found {type(obj).__name__}).')
  out = {}
  for k, v in obj.items():
    k = k[len('module.'):] if k.startswith('module.') else k
    out[k] = v.detach().float().numpy() if v.is_floating_point() else v.numpy()
  return out


def describe_state_dict(sd: Mapping[str, np.ndarray]) -> str:
  """A one-line summary of an official state dict's architecture, for error messages."""
  convs = sorted(k for k in sd if re.fullmatch(r'tokenizer\.conv_layers\.\d+\.0\.weight', k))
  blocks = {m.group(1) for k in sd for m in [re.match(r'classifier\.blocks\.(\d+)\.', k)] if m}
  parts = [f'{len(blocks)} encoder layers']
  if 'classifier.norm.weight' in sd:
    parts.append(f'embedding dim {sd["classifier.norm.weight"].shape[0]}')
  if convs:
    parts.append(f'{len(convs)} conv layer(s) of kernel {sd[convs[0]].shape[-1]}')
  if PE_KEY in sd:
    parts.append(f'{sd[PE_KEY].shape[1]} positional-embedding tokens')
  if HEAD_KEYS[0] in sd:
    parts.append(f'{sd[HEAD_KEYS[0]].shape[0]} classes')
  parts.append('a class token' if 'classifier.class_emb' in sd else 'sequence pooling')
  return ', '.join(parts)


def matching_variants(sd: Mapping[str, np.ndarray]):
  """Registered names whose architecture (depth, width, tokenizer, pooling) fits a state dict."""
  convs = [k for k in sd if re.fullmatch(r'tokenizer\.conv_layers\.\d+\.0\.weight', k)]
  if not convs or 'classifier.norm.weight' not in sd:
    return []
  depth = len({k.split('.')[2] for k in sd if k.startswith('classifier.blocks.')})
  dim, kernel = sd['classifier.norm.weight'].shape[0], sd[convs[0]].shape[-1]
  family = ('vit' if 'classifier.class_emb' in sd else
            'cvt' if 'tokenizer.conv_layers.0.0.bias' in sd else 'cct')
  return [name for name, (fam, kw) in models.VARIANTS.items()
          if (fam, kw['num_layers'], kw['embedding_dim'], kw['kernel_size'],
              kw.get('n_conv_layers', 1)) == (family, depth, dim, kernel, len(convs))]


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


def is_sine_table(pe: np.ndarray, atol: float = 1e-4) -> bool:
  return bool(np.allclose(pe, sinusoidal_embedding(pe.shape[1], pe.shape[2]), atol=atol))


def convert_state_dict(sd: Mapping[str, np.ndarray], model_name: str, *,
                       img_size=None, num_classes: Optional[int] = None, seed: int = 0,
                       **overrides) -> Tuple[Any, Dict[str, Any]]:
  """An official state dict (numpy arrays) -> (model, variables) for the named variant.

  At a new `img_size` a learnable positional embedding is resized as the official loader does and
  a sine one is regenerated; with a new `num_classes` the head keeps the new model's init. A sine
  variant whose checkpoint holds a trained (non-sine) table is built with a learnable embedding
  that holds the stored table, since the official `*_sine` factories trained learnable ones.
  """
  sd = dict(sd)
  if img_size is not None:
    overrides['img_size'] = img_size
  if num_classes is not None:
    overrides['num_classes'] = num_classes
  _, kwargs = models.model_kwargs(model_name, **overrides)
  if kwargs['positional_embedding'] == 'sine' and PE_KEY in sd and not is_sine_table(sd[PE_KEY]):
    log.warning('%s: the checkpoint\'s positional embedding is not the sine table; building '
                    'a learnable embedding that holds the stored one.', model_name)
    overrides['positional_embedding'] = 'learnable'
  model = models.create_model(model_name, **overrides)
  h, w = (model.img_size, model.img_size) if isinstance(model.img_size, int) else model.img_size
  init = lambda: model.init(jax.random.key(seed), jnp.zeros((1, h, w, model.n_input_channels)))
  target = flax.traverse_util.flatten_dict(jax.eval_shape(init)['params'], sep='/')
  hint = (f'the checkpoint has {describe_state_dict(sd)}; {model_name} has '
          f'{model.num_layers} encoder layers, embedding dim {model.embedding_dim}, '
          f'{model.num_classes} classes.')
  if model_name not in matching_variants(sd) and matching_variants(sd):
    hint += f' Variants that fit the file: {", ".join(matching_variants(sd))}.'


  # Positional embedding: drop a sine table (regenerated by the model), resize a learnable one.
  if PE_KEY in sd and model.positional_embedding != 'learnable':
    sd.pop(PE_KEY)
  elif PE_KEY in sd and 'classifier/positional_emb' in target:
    want = target['classifier/positional_emb'].shape
    if sd[PE_KEY].shape[1] != want[1] and sd[PE_KEY].shape[2] == want[2]:
      num_prefix = 0 if model.seq_pool else 1
      log.info('Resizing the positional embedding from %d to %d tokens.',
                   sd[PE_KEY].shape[1], want[1])
      sd[PE_KEY] = resize_positional_embedding(sd[PE_KEY], model.grid_size(), num_prefix)

  # Head: a requested class count different from the checkpoint's keeps the fresh init.
  reinit_head = (num_classes is not None and HEAD_KEYS[1] in sd
                 and sd[HEAD_KEYS[1]].shape[0] != num_classes)
  if reinit_head:
    log.warning('Checkpoint head has %d classes, model %d: classifier.fc re-initialised.',
                    sd[HEAD_KEYS[1]].shape[0], num_classes)
    for k in HEAD_KEYS:
      sd.pop(k, None)

  params, unexpected, mismatched = {}, [], []
  for key, value in sd.items():
    try:
      path, layout = flax_path(key)
    except KeyError:
      unexpected.append(key)
      continue
    if path not in target:
      unexpected.append(key)
      continue
    value = _LAYOUT[layout](value)
    if value.shape != target[path].shape:
      want = tuple(_TORCH_SHAPE[layout](target[path].shape))
      mismatched.append(f'{key}: checkpoint {tuple(sd[key].shape)}, model {want}')
    params[path] = value
  fresh = {'classifier/fc/kernel', 'classifier/fc/bias'} if reinit_head else set()
  missing = sorted(set(target) - set(params) - fresh)
  if missing or unexpected or mismatched:
    lines = [f'Cannot load this checkpoint into {model_name}: {hint}']
    for title, items in (('Shape mismatch', mismatched), ('Missing from the checkpoint', missing),
                         ('Not in the model', sorted(unexpected))):
      if items:
        more = f' ... and {len(items) - 6} more' if len(items) > 6 else ''
        lines.append(f'{title} ({len(items)}): ' + '; '.join(items[:6]) + more)
    raise CheckpointError('\n'.join(lines))

  if fresh:
    fresh_params = flax.traverse_util.flatten_dict(jax.jit(init)()['params'], sep='/')
    params.update({k: fresh_params[k] for k in fresh})
  params = {k: jnp.asarray(v, dtype=model.param_dtype) for k, v in params.items()}
  return model, {'params': flax.traverse_util.unflatten_dict(params, sep='/')}


def load_torch_checkpoint(path: str, model_name: str, *, img_size=None,
                          num_classes: Optional[int] = None, use_ema: bool = False,
                          **overrides) -> Tuple[Any, Dict[str, Any]]:
  """Reads an official (or timm-trained) `.pth` file into the named variant: (model, variables)."""
  sd = read_state_dict(path, use_ema=use_ema)
  return convert_state_dict(sd, model_name, img_size=img_size, num_classes=num_classes, **overrides)
