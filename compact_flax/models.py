"""CCT, CVT and ViT-Lite, and the table of every official variant by its official name (the text
models, `text_*`, are in `text.py`).

Vision inputs are NHWC floats. `img_size` may be an int or (height, width); it fixes the shape of the
positional embedding. Constructor fields mirror the official PyTorch classes.
"""

import dataclasses
import difflib
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax.numpy as jnp

from compact_flax.text import TextCCT, TextCVT, TextTransformerLite, TextViTLite
from compact_flax.tokenizer import Tokenizer, _pair
from compact_flax.transformer import TransformerClassifier, check_positional_embedding

Dtype = Any
Size = Union[int, Tuple[int, int]]


class _CompactTransformer(nn.Module):
  """Fields common to the three families (the official defaults)."""
  img_size: Size = 224
  embedding_dim: int = 768
  n_input_channels: int = 3
  dropout: float = 0.0
  attention_dropout: float = 0.1
  stochastic_depth: float = 0.1
  num_layers: int = 14
  num_heads: int = 6
  mlp_ratio: float = 4.0
  num_classes: int = 1000
  positional_embedding: str = 'learnable'  # 'learnable' | 'sine' | 'none'
  scan_layers: bool = False  # the encoder under nn.scan: compiles once (TransformerClassifier)
  dtype: Optional[Dtype] = None  # compute dtype, e.g. jnp.bfloat16
  param_dtype: Dtype = jnp.float32

  seq_pool = True  # class attribute, not a field: the family decides

  def make_tokenizer(self, **module_kw) -> Tokenizer:
    raise NotImplementedError

  def grid_size(self) -> Tuple[int, int]:
    """The token grid (rows, cols) of an `img_size` image (without the class token)."""
    return self.make_tokenizer(parent=None).grid_size(_pair(self.img_size))

  def num_tokens(self) -> int:
    rows, cols = self.grid_size()
    return rows * cols

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    """Images (batch, H, W, C) -> logits (batch, num_classes)."""
    check_positional_embedding(self.positional_embedding)
    if x.ndim != 4 or x.shape[-1] != self.n_input_channels:
      raise ValueError(f'Expected NHWC images with {self.n_input_channels} channels, got shape '
                       f'{x.shape} (PyTorch NCHW arrays need x.transpose(0, 2, 3, 1)).')
    x = self.make_tokenizer(name='tokenizer')(x.astype(self.dtype or x.dtype))
    return TransformerClassifier(
        num_classes=self.num_classes, num_layers=self.num_layers, num_heads=self.num_heads,
        mlp_ratio=self.mlp_ratio, seq_pool=self.seq_pool,
        positional_embedding=self.positional_embedding, sequence_length=self.num_tokens(),
        dropout=self.dropout, attention_dropout=self.attention_dropout,
        stochastic_depth=self.stochastic_depth, scan_layers=self.scan_layers, dtype=self.dtype,
        param_dtype=self.param_dtype, name='classifier')(x, train=train)


class CCT(_CompactTransformer):
  """Compact Convolutional Transformer: conv+pool tokenizer, encoder, sequence pooling."""
  n_conv_layers: int = 1
  kernel_size: int = 7
  stride: int = 2
  padding: int = 3
  pooling_kernel_size: int = 3
  pooling_stride: int = 2
  pooling_padding: int = 1

  def make_tokenizer(self, **module_kw):
    return Tokenizer(
        self.embedding_dim, self.kernel_size, self.stride, self.padding,
        n_conv_layers=self.n_conv_layers, pooling_kernel_size=self.pooling_kernel_size,
        pooling_stride=self.pooling_stride, pooling_padding=self.pooling_padding,
        max_pool=True, activation=True, conv_bias=False, dtype=self.dtype,
        param_dtype=self.param_dtype, **module_kw)


class CVT(_CompactTransformer):
  """Compact Vision Transformer: patch tokenizer, encoder, sequence pooling."""
  kernel_size: int = 16  # patch size

  def make_tokenizer(self, **module_kw):
    for size in _pair(self.img_size):
      if size % self.kernel_size:
        raise ValueError(f'Image size {self.img_size} must be divisible by the patch size '
                         f'{self.kernel_size}.')
    return Tokenizer(
        self.embedding_dim, self.kernel_size, self.kernel_size, 0, n_conv_layers=1,
        max_pool=False, activation=False, conv_bias=True, dtype=self.dtype,
        param_dtype=self.param_dtype, **module_kw)


class ViTLite(CVT):
  """ViT-Lite: patch tokenizer, class token, encoder; classifies from the class token."""
  seq_pool = False


# --- The official variants --------------------------------------------------------------------

# depth -> (num_heads, mlp_ratio, embedding_dim), as in the official cct_N / cvt_N / vit_N.
_SIZES = {2: (2, 1, 128), 4: (2, 1, 128), 6: (4, 2, 256), 7: (4, 2, 256), 14: (6, 3, 384)}
_FAMILIES = {'cct': CCT, 'cvt': CVT, 'vit': ViTLite, 'text_cct': TextCCT, 'text_cvt': TextCVT,
             'text_vit': TextViTLite, 'text_transformer': TextTransformerLite}
TEXT_FAMILIES = ('text_cct', 'text_cvt', 'text_vit', 'text_transformer')


def _variant(family, depth, img_size, num_classes, pe, kernel_size, n_conv_layers=None):
  heads, mlp_ratio, dim = _SIZES[depth]
  kw = dict(num_layers=depth, num_heads=heads, mlp_ratio=mlp_ratio, embedding_dim=dim,
            kernel_size=kernel_size, img_size=img_size, num_classes=num_classes,
            positional_embedding=pe)
  if family == 'cct':  # official `_cct`: stride and padding follow the kernel size
    kw.update(n_conv_layers=n_conv_layers, stride=max(1, kernel_size // 2 - 1),
              padding=max(1, kernel_size // 2))
  return family, kw


def _text_variant(family, depth):
  """The official `text_*_N` factories: CCT kernel 4 (stride and padding from it), CVT and ViT
  patch 4, Transformer-Lite as wide as the 300-d word vectors; `text_cvt_6` is 128 wide, as
  published (the other 6-layer ones are 256)."""
  heads, mlp_ratio, dim = _SIZES[depth]
  kw = dict(num_layers=depth, num_heads=heads, mlp_ratio=mlp_ratio, embedding_dim=dim,
            positional_embedding='sine')
  if family == 'text_cct':
    kw.update(kernel_size=4, stride=1, padding=2)
  elif family in ('text_cvt', 'text_vit'):
    kw.update(patch_size=4, embedding_dim=128 if family == 'text_cvt' else dim)
  else:
    kw.update(embedding_dim=300)
  return family, kw


def _official_table() -> Dict[str, Tuple[str, Dict[str, Any]]]:
  table = {}
  for pe, suffix in (('learnable', ''), ('sine', '_sine')):
    for d in (2, 4):
      table[f'cct_{d}_3x2_32{suffix}'] = _variant('cct', d, 32, 10, pe, 3, 2)
    for d in (6, 7):
      table[f'cct_{d}_3x1_32{suffix}'] = _variant('cct', d, 32, 10, pe, 3, 1)
      table[f'cct_{d}_3x2_32{suffix}'] = _variant('cct', d, 32, 10, pe, 3, 2)
    table[f'cct_7_3x1_32{suffix}_c100'] = _variant('cct', 7, 32, 100, pe, 3, 1)
    table[f'cct_7_7x2_224{suffix}'] = _variant('cct', 7, 224, 102, pe, 7, 2)
    for family in ('cvt', 'vit'):
      for d in (2, 4, 6, 7):
        table[f'{family}_{d}_4_32{suffix}'] = _variant(family, d, 32, 10, pe, 4)
  for family in TEXT_FAMILIES:
    for d in (2, 4, 6):
      table[f'{family}_{d}'] = _text_variant(family, d)
  table['cct_14_7x2_224'] = _variant('cct', 14, 224, 1000, 'learnable', 7, 2)
  table['cct_14_7x2_384'] = _variant('cct', 14, 384, 1000, 'learnable', 7, 2)
  table['cct_14_7x2_384_fl'] = _variant('cct', 14, 384, 102, 'learnable', 7, 2)
  return dict(sorted(table.items()))


VARIANTS = _official_table()  # name -> (family, constructor arguments)


def list_models() -> Sequence[str]:
  """Every registered model name."""
  return list(VARIANTS)


def model_kwargs(name: str, **overrides) -> Tuple[str, Dict[str, Any]]:
  """(family, constructor arguments) of a registered name with `overrides` applied."""
  if name not in VARIANTS:
    close = difflib.get_close_matches(name, VARIANTS, n=5, cutoff=0.5)
    hint = f' Did you mean: {", ".join(close)}?' if close else ''
    raise ValueError(f"Unknown model '{name}'.{hint} compact_flax.list_models() lists all "
                     f'{len(VARIANTS)}.')
  family, kwargs = VARIANTS[name]
  cls = _FAMILIES[family]
  if family == 'text_cct' and 'kernel_size' in overrides:  # official `_text_cct`: from the kernel
    k = overrides['kernel_size']
    kwargs = dict(kwargs, stride=max(1, k // 2 - 1), padding=max(1, k // 2))
  fields = {f.name for f in dataclasses.fields(cls)} - {'parent', 'name'}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise TypeError(f'{cls.__name__} has no argument(s) {unknown}; it takes {sorted(fields)}.')
  return family, {**kwargs, **overrides}


def constructor_arguments(model: nn.Module) -> Dict[str, Any]:
  """A built model's constructor fields (not Flax's `name`/`parent`), to rebuild it by name."""
  return {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
          if f.name not in ('parent', 'name')}


def create_model(model_name: str, **overrides) -> nn.Module:
  """Builds a registered variant, e.g. `create_model('cct_7_3x1_32', num_classes=100)`.

  Flax's `name=` and `parent=` pass through, so a variant can be a named submodule.
  """
  module_kw = {k: overrides.pop(k) for k in ('name', 'parent') if k in overrides}
  family, kwargs = model_kwargs(model_name, **overrides)
  return _FAMILIES[family](**kwargs, **module_kw)
