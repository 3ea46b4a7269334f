"""Text-CCT, Text-CVT, Text-ViT-Lite and Transformer-Lite: word ids in, class logits out.

    model = compact_flax.create_model('text_cct_2', kernel_size=1, vocab_size=len(vocab))
    logits = model.apply(variables, ids, mask=mask)   # ids (batch, length) int, mask bool

A word embedding (`embedder`), for all but Transformer-Lite a 1-D convolutional tokenizer over the
sequence (`tokenizer`), then the encoder and pooling of the vision models (`classifier`). Names
and defaults follow the official `src/text`; what differs from it on purpose:
* the positional table covers the real positions only (the official table has a leading
  "padding" row that its forward pass adds too, so that forward never ran);
* the mask reaches every stage, sequence pooling and the class token included, so a padded
  sequence's logits depend neither on the padded ids nor on how much padding there is
  (`mask_pooling=False` pools over every token, as the official code would have);
* inputs shorter than `seq_len` are padded to it (masked); longer ones are refused.
"""

from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from compact_flax.transformer import TransformerClassifier, check_positional_embedding

Dtype = Any


def embedding_init(padding_idx: Optional[int]):
  """torch.nn.Embedding's init: N(0, 1), the padding row zero."""
  def init(key, shape, dtype=jnp.float32):
    table = jax.random.normal(key, shape, dtype)
    return table if padding_idx is None else table.at[padding_idx].set(0)
  return init


class Embedder(nn.Module):
  """Word ids -> vectors; positions outside the mask become zero vectors."""
  vocab_size: int
  word_embedding_dim: int = 300
  padding_idx: Optional[int] = 1
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, ids, mask=None):
    x = nn.Embed(self.vocab_size, self.word_embedding_dim, dtype=self.dtype,
                 param_dtype=self.param_dtype, embedding_init=embedding_init(self.padding_idx),
                 name='embeddings')(ids)
    return x if mask is None else x * mask[..., None].astype(x.dtype)


def _window_any(mask, size: int, stride: int, padding: int):
  """Whether each window of a (batch, length) bool mask holds a True: the receptive field rule
  the official tokenizer applies to its mask."""
  return jax.lax.reduce_window(mask, False, jax.lax.bitwise_or, (1, size), (1, stride),
                               ((0, 0), (padding, padding)))


def conv_length(n: int, size: int, stride: int, padding: int) -> int:
  return (n + 2 * padding - size) // stride + 1


class TextTokenizer(nn.Module):
  """Conv over the sequence (the official (k x word-dim) Conv2d, as a 1-D conv), then ReLU and
  max-pooling for CCT; a patch embedding (kernel = stride, no padding) for CVT and ViT-Lite.

  Returns the tokens and, given an input mask, the token mask: a token is real when its receptive
  field holds a real word.
  """
  embedding_dim: int
  kernel_size: int
  stride: int
  padding: int
  max_pool: bool = True
  pooling_kernel_size: int = 2
  pooling_stride: int = 2
  pooling_padding: int = 1
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32

  def num_tokens(self, seq_len: int) -> int:
    n = conv_length(seq_len, self.kernel_size, self.stride, self.padding)
    if self.max_pool:
      n = conv_length(n, self.pooling_kernel_size, self.pooling_stride, self.pooling_padding)
    return n

  @nn.compact
  def __call__(self, x, mask=None):
    x = nn.Conv(self.embedding_dim, (self.kernel_size,), strides=(self.stride,),
                padding=[(self.padding, self.padding)], use_bias=False,
                kernel_init=nn.initializers.variance_scaling(2.0, 'fan_in', 'normal'),
                dtype=self.dtype, param_dtype=self.param_dtype, name='conv_layers_0')(x)
    pool = (self.pooling_kernel_size, self.pooling_stride, self.pooling_padding)
    if self.max_pool:
      x = nn.max_pool(nn.relu(x), pool[:1], strides=pool[1:2], padding=[(pool[2], pool[2])])
    if mask is None:
      return x, None
    mask = _window_any(mask, self.kernel_size, self.stride, self.padding)
    if self.max_pool:
      mask = _window_any(mask, *pool)
    return x * mask[..., None].astype(x.dtype), mask


class _TextTransformer(nn.Module):
  """Fields common to the four families (the official defaults, `num_classes` AG News's)."""
  seq_len: int = 64  # the longest input, in words: the positional table's size
  vocab_size: int = 100000
  word_embedding_dim: int = 300
  padding_idx: Optional[int] = 1
  embedding_dim: int = 128
  num_layers: int = 2
  num_heads: int = 2
  mlp_ratio: float = 1.0
  num_classes: int = 4
  dropout: float = 0.0
  attention_dropout: float = 0.1
  stochastic_depth: float = 0.1
  positional_embedding: str = 'sine'  # 'sine' | 'learnable' | 'none'
  mask_pooling: bool = True
  scan_layers: bool = False  # the encoder under nn.scan (TransformerClassifier)
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32

  seq_pool = True  # class attribute: the family decides

  def make_tokenizer(self, **module_kw) -> Optional[TextTokenizer]:
    return None

  def num_tokens(self, seq_len: Optional[int] = None) -> int:
    """Tokens the encoder sees for an input of `seq_len` words (default: the model's)."""
    seq_len = self.seq_len if seq_len is None else seq_len
    tok = self.make_tokenizer(parent=None)
    return seq_len if tok is None else tok.num_tokens(seq_len)

  def receptive_fields(self) -> np.ndarray:
    """(tokens, seq_len) bool: the words each token the encoder sees was computed from."""
    words = jnp.eye(self.seq_len, dtype=bool)  # one word per row
    tok = self.make_tokenizer(parent=None)
    if tok is None:
      return np.asarray(words)
    fields = _window_any(words, tok.kernel_size, tok.stride, tok.padding)
    if tok.max_pool:
      fields = _window_any(fields, tok.pooling_kernel_size, tok.pooling_stride, tok.pooling_padding)
    return np.asarray(fields).T

  def input_spec(self) -> Tuple[Tuple[int, ...], Any]:
    """One example's shape and dtype."""
    return (self.seq_len,), jnp.int32

  def _fit_length(self, ids, mask):
    """Pads a shorter input to `seq_len` (masked), so every input is seen at the one length the
    model was built for: the logits then do not depend on how far an input was padded."""
    b, n = ids.shape
    if n > self.seq_len:
      raise ValueError(f'The input has {n} words but the model was built for at most '
                       f'{self.seq_len}: truncate it, or build the model with seq_len={n}.')
    if n < self.seq_len:
      mask = jnp.ones((b, n), bool) if mask is None else mask
      ids = jnp.pad(ids, ((0, 0), (0, self.seq_len - n)), constant_values=self.padding_idx or 0)
      mask = jnp.pad(mask, ((0, 0), (0, self.seq_len - n)))
    return ids, mask

  @nn.compact
  def __call__(self, ids, mask=None, *, train: bool = False):
    """Word ids (batch, length) int, `mask` (batch, length) bool or None -> logits."""
    check_positional_embedding(self.positional_embedding)
    if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
      raise ValueError(f'Expected word ids of shape (batch, length) and an integer dtype, got '
                       f'{ids.shape} {ids.dtype}.')
    if mask is not None:
      if mask.shape != ids.shape:
        raise ValueError(f'mask has shape {mask.shape} but the ids have {ids.shape}.')
      mask = mask.astype(bool)
    ids, mask = self._fit_length(ids, mask)
    x = Embedder(self.vocab_size, self.word_embedding_dim, self.padding_idx, dtype=self.dtype,
                 param_dtype=self.param_dtype, name='embedder')(ids, mask)
    tokenizer = self.make_tokenizer(name='tokenizer')
    if tokenizer is not None:
      x, mask = tokenizer(x, mask)
    return TransformerClassifier(
        num_classes=self.num_classes, num_layers=self.num_layers, num_heads=self.num_heads,
        mlp_ratio=self.mlp_ratio, seq_pool=self.seq_pool,
        positional_embedding=self.positional_embedding, sequence_length=self.num_tokens(),
        mask_pooling=self.mask_pooling, dropout=self.dropout,
        attention_dropout=self.attention_dropout, stochastic_depth=self.stochastic_depth,
        scan_layers=self.scan_layers, dtype=self.dtype, param_dtype=self.param_dtype,
        name='classifier')(x, mask, train=train)


class TextCCT(_TextTransformer):
  """Text-CCT: conv (kernel spanning the word vector) + ReLU + max-pool tokenizer, sequence pooling."""
  kernel_size: int = 2
  stride: int = 1
  padding: int = 1
  pooling_kernel_size: int = 2
  pooling_stride: int = 2
  pooling_padding: int = 1

  def make_tokenizer(self, **module_kw):
    return TextTokenizer(self.embedding_dim, self.kernel_size, self.stride, self.padding,
                         max_pool=True, pooling_kernel_size=self.pooling_kernel_size,
                         pooling_stride=self.pooling_stride, pooling_padding=self.pooling_padding,
                         dtype=self.dtype, param_dtype=self.param_dtype, **module_kw)


class TextCVT(_TextTransformer):
  """Text-CVT: patches of `patch_size` words, linearly embedded; sequence pooling."""
  patch_size: int = 2

  def make_tokenizer(self, **module_kw):
    if self.seq_len % self.patch_size:
      raise ValueError(f'seq_len {self.seq_len} must be a multiple of the patch size '
                       f'{self.patch_size}.')
    return TextTokenizer(self.embedding_dim, self.patch_size, self.patch_size, 0, max_pool=False,
                         dtype=self.dtype, param_dtype=self.param_dtype, **module_kw)


class TextViTLite(TextCVT):
  """Text-ViT-Lite: the CVT tokenizer, a class token instead of sequence pooling."""
  seq_pool = False


class TextTransformerLite(_TextTransformer):
  """Transformer-Lite: the word vectors themselves are the tokens, so the encoder's width is
  `word_embedding_dim` (`embedding_dim` is not used); a class token."""
  embedding_dim: int = 300
  seq_pool = False
