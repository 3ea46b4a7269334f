"""The transformer encoder, positional embeddings and sequence pooling shared by CCT, CVT and ViT-Lite.

Names of submodules follow the official PyTorch `TransformerClassifier`, so that converting a
checkpoint is a lookup table (see `convert.py`).
"""

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from compact_flax import kernels
from compact_flax.kernels import token_wise

Dtype = Any

POSITIONAL_EMBEDDINGS = ('learnable', 'sine', 'none')

# PyTorch's trunc_normal_(std=.02) cuts at +-2 absolute, i.e. 100 sigma: effectively untruncated.
dense_init = nn.initializers.normal(stddev=0.02)
# LayerNorm epsilon of torch.nn.LayerNorm (Flax's default is 1e-6).
LN_EPS = 1e-5


def sinusoidal_embedding(num_tokens: int, dim: int) -> np.ndarray:
  """The official frozen table, shape (1, tokens, dim): sin on even channels, cos on odd (interleaved)."""
  p = np.arange(num_tokens, dtype=np.float64)[:, None]
  i = np.arange(dim)[None, :]
  angle = (p / 10000.0**(2 * (i // 2) / dim)).astype(np.float32)
  pe = np.where(i % 2 == 0, np.sin(angle), np.cos(angle))
  return pe[None].astype(np.float32)


def check_positional_embedding(kind: str):
  if kind not in POSITIONAL_EMBEDDINGS:
    raise ValueError(f"Unknown positional embedding '{kind}'; expected one of {POSITIONAL_EMBEDDINGS}.")


def softmax_attention(q, k, v, mask=None, dropout_rate: float = 0.0, dropout_rng=None):
  """Attention over (batch, tokens, heads, head_dim) inputs; returns the output in that layout and
  the weights (batch, heads, query, key). Softmax in float32; `dropout_rng` given: `nn.Dropout` on
  the weights. A pure function, so that a training step can recompute it."""
  logits = (jnp.einsum('bqhd,bkhd->bhqk', q, k) * q.shape[-1]**-0.5).astype(jnp.float32)
  if mask is not None:  # a finite fill, as the official code: fully masked rows stay finite
    pair = mask[:, None, :, None] & mask[:, None, None, :]
    logits = jnp.where(pair, logits, -jnp.finfo(jnp.float32).max)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  probs = nn.Dropout(dropout_rate).apply({}, weights, deterministic=dropout_rng is None,
                                         rng=dropout_rng)
  return jnp.einsum('bhqk,bkhd->bqhd', probs, v), weights


class Attention(nn.Module):
  """Multi-head self-attention with a fused, bias-free `qkv` projection (timm layout)."""
  num_heads: int
  attention_dropout: float = 0.1
  projection_dropout: float = 0.1
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32

  def _fused(self, mask, dtype, train: bool) -> bool:
    """Whether cuDNN's fused attention serves: on GPU, in 16-bit, without a mask (padded rows keep
    the official uniform attention), without attention dropout (it has none: in training the
    explicit softmax runs) and without capturing the attention weights (it never forms them)."""
    return (kernels.fused_attention() and dtype in (jnp.bfloat16, jnp.float16) and mask is None
            and (not train or self.attention_dropout == 0.0)
            and not self.is_mutable_collection('intermediates'))

  @nn.compact
  def __call__(self, x, mask=None, *, train: bool = False):
    """`mask` (batch, tokens) bool, optional: a pair attends only where both are True (the official
    masked attention; a padded query attends uniformly to every key)."""
    b, n, c = x.shape
    head_dim = c // self.num_heads
    dense = lambda features, name, use_bias=True: nn.Dense(
        features, use_bias=use_bias, kernel_init=dense_init, dtype=self.dtype,
        param_dtype=self.param_dtype, name=name)
    qkv = token_wise(dense(3 * c, 'qkv', use_bias=False), x)
    # Output channels are laid out [3][heads][head_dim], as the checkpoints store them.
    q, k, v = jnp.moveaxis(qkv.reshape(b, n, 3, self.num_heads, head_dim), 2, 0)
    rng = self.make_rng('dropout') if train and self.attention_dropout > 0 else None
    if self._fused(mask, v.dtype, train):
      x = jax.nn.dot_product_attention(q, k, v, implementation='cudnn')
    elif self.is_mutable_collection('intermediates'):
      x, weights = softmax_attention(q, k, v, mask, self.attention_dropout, rng)
      self.sow('intermediates', 'attention_weights', weights)  # (batch, heads, query, key)
    else:
      attend = lambda q, k, v, mask, rng: softmax_attention(
          q, k, v, mask, self.attention_dropout, rng)[0]
      x = (kernels.recompute_on_tpu(attend) if train else attend)(q, k, v, mask, rng)
    x = token_wise(dense(c, 'proj'), x.reshape(b, n, c))
    return nn.Dropout(self.projection_dropout, name='proj_drop')(x, deterministic=not train)


class DropPath(nn.Module):
  """Stochastic depth: drops a sample's whole residual branch with probability `rate`, which may be
  traced (a scanned stack gives each layer its rate as data). The same draws as
  `nn.Dropout(rate, broadcast_dims=(1, 2))` under the same name."""

  @nn.compact
  def __call__(self, x, rate, *, deterministic: bool):
    if deterministic or (isinstance(rate, (int, float)) and rate == 0.0):
      return x
    if isinstance(rate, (int, float)) and rate == 1.0:
      return jnp.zeros_like(x)
    keep = 1.0 - rate
    mask = jax.random.bernoulli(self.make_rng('dropout'), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jax.lax.select(jnp.broadcast_to(mask, x.shape), x / jnp.asarray(keep, x.dtype),
                          jnp.zeros_like(x))


class TransformerEncoderLayer(nn.Module):
  """The official encoder layer, post-norm quirk included.

  `x = norm1(x + drop_path(attn(pre_norm(x)))); x = x + drop_path(mlp(x))`: the residual stream
  after attention is normalised. Every official checkpoint was trained this way.
  """
  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  attention_dropout: float = 0.1
  drop_path_rate: float = 0.0
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None, *, train: bool = False, drop_path_rate=None):
    """`drop_path_rate`, when given, replaces the field (a scanned stack passes each layer's)."""
    d = x.shape[-1]
    rate = self.drop_path_rate if drop_path_rate is None else drop_path_rate
    norm = lambda name: nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, param_dtype=self.param_dtype,
                                     name=name)
    dense = lambda features, name: nn.Dense(features, kernel_init=dense_init, dtype=self.dtype,
                                            param_dtype=self.param_dtype, name=name)
    # Stochastic depth: one Bernoulli draw per sample, broadcast over tokens and channels.
    drop_path = functools.partial(DropPath(name='drop_path'), rate=rate)
    dropout = lambda name: nn.Dropout(self.dropout, name=name)

    attn = Attention(self.num_heads, self.attention_dropout, self.dropout, dtype=self.dtype,
                     param_dtype=self.param_dtype, name='self_attn')
    y = attn(norm('pre_norm')(x), mask, train=train)
    x = norm('norm1')(x + drop_path(y, deterministic=not train))
    gelu = functools.partial(nn.gelu, approximate=False)
    y = (kernels.recompute_on_tpu(gelu) if train else gelu)(
        token_wise(dense(self.mlp_dim, 'linear1'), x))
    y = token_wise(dense(d, 'linear2'), dropout('dropout1')(y, deterministic=not train))
    y = dropout('dropout2')(y, deterministic=not train)
    return x + drop_path(y, deterministic=not train)


class TransformerClassifier(nn.Module):
  """Positional embedding, encoder stack, final LayerNorm, then sequence pooling or the class token.

  With a token `mask` (batch, tokens) bool, attention, sequence pooling and the class token see
  only the real tokens, so the logits depend neither on what pads a sequence nor on how much
  (`mask_pooling=False` pools over every token, as the official text code did).

  Sows into the 'intermediates' collection: `tokens` (after the final norm), `pooling_weights`
  (sequence pooling's softmax over tokens, shape (batch, tokens)) and `pre_logits`.
  """
  num_classes: int
  num_layers: int
  num_heads: int
  mlp_ratio: float
  seq_pool: bool = True  # False: prepend a class token and classify from it (ViT-Lite)
  positional_embedding: str = 'learnable'
  sequence_length: Optional[int] = None  # tokens from the tokenizer (no class token): the PE's size
  mask_pooling: bool = True
  # One encoder layer under nn.scan, its weights stacked on a leading axis ('blocks' instead of
  # 'blocks_0', 'blocks_1', ...): the same function, compiled once instead of once per layer,
  # though the loop moves more bytes per training step (docs/notes.md, TPU slices).
  # Checkpoints load into either layout (merge.match_layer_layout).
  scan_layers: bool = False
  dropout: float = 0.0
  attention_dropout: float = 0.1
  stochastic_depth: float = 0.1
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None, *, train: bool = False):
    check_positional_embedding(self.positional_embedding)
    b, n, d = x.shape
    if self.positional_embedding != 'none' and n != self.sequence_length:
      raise ValueError(
          f'The tokenizer made {n} tokens but the positional embedding was built for '
          f'{self.sequence_length}: build the model with the img_size of your input, or convert '
          f'the weights to the new resolution (convert.load_torch_checkpoint(..., img_size=...)).')
    if not self.seq_pool:
      cls = self.param('class_emb', nn.initializers.zeros, (1, 1, d), self.param_dtype)
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, d)), x], axis=1)
      if mask is not None:
        mask = jnp.concatenate([jnp.ones((b, 1), bool), mask], axis=1)
    tokens = x.shape[1]
    if self.positional_embedding == 'learnable':
      # trunc_normal_(std=.2) with PyTorch's absolute +-2 cut: ten sigma, effectively untruncated.
      pe = self.param('positional_emb', nn.initializers.normal(stddev=0.2),
                      (1, tokens, d), self.param_dtype)
      x = x + pe.astype(x.dtype)
    elif self.positional_embedding == 'sine':
      x = x + jnp.asarray(sinusoidal_embedding(tokens, d), x.dtype)  # a constant, not a parameter
    x = nn.Dropout(self.dropout, name='dropout')(x, deterministic=not train)

    rates = np.linspace(0, self.stochastic_depth, self.num_layers) if self.num_layers else []
    layer = functools.partial(TransformerEncoderLayer, self.num_heads, int(d * self.mlp_ratio),
                              self.dropout, self.attention_dropout, dtype=self.dtype,
                              param_dtype=self.param_dtype)
    if self.scan_layers and self.num_layers:
      scan = nn.scan(lambda mdl, x, rate, mask: (mdl(x, mask, train=train, drop_path_rate=rate),
                                                 None),
                     variable_axes={'params': 0, 'intermediates': 0},
                     split_rngs={'params': True, 'dropout': True},
                     in_axes=(0, nn.broadcast), length=self.num_layers)
      x, _ = scan(layer(name='blocks'), x, jnp.asarray(rates, jnp.float32), mask)
    for i, rate in enumerate([] if self.scan_layers else rates):
      x = layer(drop_path_rate=float(rate), name=f'blocks_{i}')(x, mask, train=train)
    x = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, param_dtype=self.param_dtype, name='norm')(x)
    self.sow('intermediates', 'tokens', x)

    if self.seq_pool:
      w = token_wise(nn.Dense(1, kernel_init=dense_init, dtype=self.dtype,
                              param_dtype=self.param_dtype, name='attention_pool'), x)
      w = jnp.squeeze(w, -1).astype(jnp.float32)
      if mask is not None and self.mask_pooling:
        w = jnp.where(mask, w, -jnp.finfo(jnp.float32).max)
      w = jax.nn.softmax(w, axis=-1)
      self.sow('intermediates', 'pooling_weights', w)
      x = jnp.einsum('bn,bnd->bd', w.astype(x.dtype), x)
    else:
      x = jax.lax.index_in_dim(x, 0, axis=1, keepdims=False)  # a slice (exports to TFLite)
    self.sow('intermediates', 'pre_logits', x)
    return nn.Dense(self.num_classes, kernel_init=dense_init, dtype=self.dtype,
                    param_dtype=self.param_dtype, name='fc')(x)
