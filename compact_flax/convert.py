"""Official PyTorch checkpoints -> Flax variables: a name table, transpose rules and a strict merge.

    model, variables = load_torch_checkpoint('cct_7_3x1_32_cifar10_300epochs.pth', 'cct_7_3x1_32')
    logits = model.apply(variables, images_nhwc)

PyTorch is needed only here, to read the `.pth` file (`pip install "compact-flax[convert]"`).
"""

import argparse
import contextlib
import logging
import os
import re
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from compact_flax import merge
from compact_flax import models
from compact_flax.merge import CheckpointError  # pylint: disable=unused-import  (re-exported)
from compact_flax.transformer import sinusoidal_embedding

PE_KEY = 'classifier.positional_emb'
HEAD_KEYS = ('classifier.fc.weight', 'classifier.fc.bias')

# Official state-dict key -> Flax parameter path, and how the tensor is laid out.
#   conv: OIHW -> HWIO; linear: (out, in) -> (in, out); copy: as it is.
NAME_TABLE = (
    (r'tokenizer\.conv_layers\.(\d+)\.0\.weight', 'tokenizer/conv_layers_{0}/kernel', 'conv'),
    # Text: a (D, 1, k, word-dim) Conv2d over the sequence, a 1-D conv of kernel (k, word-dim, D).
    (r'tokenizer\.conv_layers\.(\d+)\.weight', 'tokenizer/conv_layers_{0}/kernel', 'text_conv'),
    (r'embedder\.embeddings\.weight', 'embedder/embeddings/embedding', 'copy'),
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
_LAYOUT = {'conv': lambda w: w.transpose(2, 3, 1, 0), 'linear': lambda w: w.T, 'copy': lambda w: w,
           'text_conv': lambda w: w[:, 0].transpose(1, 2, 0)}
_TORCH_SHAPE = {'conv': lambda s: (s[3], s[2], s[0], s[1]), 'linear': lambda s: s[::-1],
                'copy': lambda s: s, 'text_conv': lambda s: (s[2], 1, s[0], s[1])}
TEXT_EMBEDDING_KEY = 'embedder.embeddings.weight'
TEXT_CONV_KEY = 'tokenizer.conv_layers.0.weight'
log = logging.getLogger(__name__)


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


def _load_failure(path: str, e: Exception) -> str:
  """Why torch.load refused a file, in one line, without its advice to load unsafely."""
  if os.path.getsize(path) == 0:
    return 'the file is empty.'
  text = str(e)
  if 'Weights only load failed' in text:
    return ('it holds Python objects besides tensors, which are not loaded because unpickling '
            'them could run code. Save the state dict alone (torch.save(model.state_dict(), ...)).')
  return f'{type(e).__name__}: {text.splitlines()[0] if text else "no details"}'


def _timm_globals(torch):
  """Lets the safe loader rebuild the `argparse.Namespace` timm saves as `args` (plain fields)."""
  safe_globals = getattr(torch.serialization, 'safe_globals', None)  # PyTorch 2.5 and later
  return safe_globals([argparse.Namespace]) if safe_globals else contextlib.nullcontext()


def read_state_dict(path: str, *, use_ema: bool = False) -> Dict[str, np.ndarray]:
  """Reads an official `.pth` state dict or a timm training checkpoint into numpy arrays.

  timm's `train.py` saves `{'state_dict': ..., 'state_dict_ema': ..., 'optimizer': ...,
  'args': Namespace(...), ...}`, with a `module.` prefix when trained with DDP; `use_ema` picks
  the EMA weights.
  """
  torch = _import_torch()
  try:
    with _timm_globals(torch):
      obj = torch.load(path, map_location='cpu', weights_only=True)
  except FileNotFoundError:
    raise
  except Exception as e:  # pickle, zip and torch errors all mean the same to the user
    raise CheckpointError(f'{path} is not a PyTorch checkpoint torch.load can read: '
                          f'{_load_failure(path, e)}') from None
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
  if TEXT_EMBEDDING_KEY in sd:
    return _matching_text_variants(sd)
  convs = [k for k in sd if re.fullmatch(r'tokenizer\.conv_layers\.\d+\.0\.weight', k)]
  if not convs or 'classifier.norm.weight' not in sd:
    return []
  depth = len({k.split('.')[2] for k in sd if k.startswith('classifier.blocks.')})
  dim, kernel = sd['classifier.norm.weight'].shape[0], sd[convs[0]].shape[-1]
  family = ('vit' if 'classifier.class_emb' in sd else
            'cvt' if 'tokenizer.conv_layers.0.0.bias' in sd else 'cct')
  return [name for name, (fam, kw) in models.VARIANTS.items() if fam not in models.TEXT_FAMILIES
          if (fam, kw['num_layers'], kw['embedding_dim'], kw['kernel_size'],
              kw.get('n_conv_layers', 1)) == (family, depth, dim, kernel, len(convs))]


def is_sine_table(pe: np.ndarray, atol: float = 1e-4) -> bool:
  return bool(np.allclose(pe, sinusoidal_embedding(pe.shape[1], pe.shape[2]), atol=atol))


# --- Text models ---------------------------------------------------------------------------------

def _matching_text_variants(sd):
  """Text variants of the state dict's depth, width and pooling (CCT and CVT look alike)."""
  depth = len({k.split('.')[2] for k in sd if k.startswith('classifier.blocks.')})
  dim = sd['classifier.norm.weight'].shape[0] if 'classifier.norm.weight' in sd else None
  families = (('text_transformer',) if TEXT_CONV_KEY not in sd else
              ('text_vit',) if 'classifier.class_emb' in sd else ('text_cct', 'text_cvt'))
  return [name for name, (fam, kw) in models.VARIANTS.items()
          if fam in families and kw['num_layers'] == depth and kw['embedding_dim'] == dim]


def text_kwargs(sd: Mapping[str, np.ndarray], model_name: str) -> Dict[str, Any]:
  """What an official text state dict fixes about the model: vocabulary, word width, kernel or
  patch, classes, positional embedding and the longest input its table covers."""
  family, _ = models.VARIANTS[model_name]
  kw = {}
  if TEXT_EMBEDDING_KEY in sd:
    kw['vocab_size'], kw['word_embedding_dim'] = sd[TEXT_EMBEDDING_KEY].shape
  if TEXT_CONV_KEY in sd:
    kw['kernel_size' if family == 'text_cct' else 'patch_size'] = sd[TEXT_CONV_KEY].shape[2]
  if HEAD_KEYS[1] in sd:
    kw['num_classes'] = sd[HEAD_KEYS[1]].shape[0]
  if PE_KEY not in sd:
    kw['positional_embedding'] = 'none'
  return kw


def _input_length(model_name: str, kwargs, tokens: int) -> Optional[int]:
  """The input length (in words) that makes `tokens` tokens: what a stored table was built for.
  Where several do (CCT makes 34 tokens of 64 or 65 words with kernel 1, 33 of 63 or 64 with
  kernel 4), the roundest, the one divisible by the highest power of two; `seq_len=` overrides."""
  model = models.create_model(model_name, **kwargs)
  patch = getattr(model, 'patch_size', 1)
  fits = [n for n in range(patch, 16 * tokens + 16, patch) if model.num_tokens(n) == tokens]
  return max(fits, key=lambda n: ((n & -n), -n)) if fits else None


def _text_state_dict(sd, model_name: str, overrides):
  """The official text layout made ours: the positional table without its leading padding row
  (the table covers positions 1.. of the official one), `seq_len` read from it."""
  sd = dict(sd)
  kwargs = {**text_kwargs(sd, model_name), **overrides}
  if PE_KEY in sd:
    sd[PE_KEY] = sd[PE_KEY][:, 1:]
    if 'seq_len' not in overrides:
      prefix = 0 if models.create_model(model_name, **kwargs).seq_pool else 1
      seq_len = _input_length(model_name, kwargs, sd[PE_KEY].shape[1] - prefix)
      if seq_len is None:
        raise CheckpointError(f'{PE_KEY} has {sd[PE_KEY].shape[1] + 1} rows, which no input '
                              f'length gives for {model_name} with {kwargs}.')
      kwargs['seq_len'] = seq_len
  return sd, kwargs


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
  family, _ = models.model_kwargs(model_name)
  if family in models.TEXT_FAMILIES:
    sd, overrides = _text_state_dict(sd, model_name, overrides)
    if num_classes is None:  # the head is in the file; a text checkpoint needs no class count
      num_classes = overrides.pop('num_classes', None)
  if num_classes is not None:
    overrides['num_classes'] = num_classes
  _, kwargs = models.model_kwargs(model_name, **overrides)
  if kwargs['positional_embedding'] == 'sine' and PE_KEY in sd and not is_sine_table(sd[PE_KEY]):
    log.warning('%s: the checkpoint\'s positional embedding is not the sine table; building '
                    'a learnable embedding that holds the stored one.', model_name)
    overrides['positional_embedding'] = 'learnable'
  model = models.create_model(model_name, **overrides)
  hint = (f'the checkpoint has {describe_state_dict(sd)}; {model_name} has '
          f'{model.num_layers} encoder layers, embedding dim {model.embedding_dim}, '
          f'{model.num_classes} classes.')
  fits = matching_variants(sd)
  if fits and model_name not in fits:
    hint += f' Variants that fit the file: {", ".join(fits)}.'

  loaded, names, unexpected = {}, {}, []
  for key, value in sd.items():
    try:
      path, layout = flax_path(key)
    except KeyError:
      unexpected.append(key)
      continue
    loaded[path], names[path] = _LAYOUT[layout](value), (key, _TORCH_SHAPE[layout])
  # A requested class count different from the checkpoint's keeps the fresh head.
  new_head = (num_classes is not None and HEAD_KEYS[1] in sd
              and sd[HEAD_KEYS[1]].shape[0] != num_classes)
  return model, merge.merge_params(model, loaded, new_head=new_head, seed=seed, names=names,
                                   unexpected=unexpected, hint=hint)


def load_torch_checkpoint(path: str, model_name: str, *, img_size=None,
                          num_classes: Optional[int] = None, use_ema: bool = False,
                          **overrides) -> Tuple[Any, Dict[str, Any]]:
  """Reads an official (or timm-trained) `.pth` file into the named variant: (model, variables)."""
  sd = read_state_dict(path, use_ema=use_ema)
  return convert_state_dict(sd, model_name, img_size=img_size, num_classes=num_classes, **overrides)
