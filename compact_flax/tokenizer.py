"""Convolutional tokenizers: CCT's conv+pool stack and the CVT/ViT-Lite patch embedding."""

from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def _pair(v) -> Tuple[int, int]:
  return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
  """Output length of a conv or pool along one axis (PyTorch's floor rule)."""
  return (size + 2 * padding - kernel) // stride + 1


def torch_conv_bias_init(fan_in: int):
  """PyTorch's default Conv2d bias init, uniform(+-1/sqrt(fan_in)); the official code keeps it."""
  bound = 1.0 / fan_in**0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def max_pool(x, kernel: int, stride: int, padding: int):
  """Max-pooling with symmetric -inf padding, as a maximum over k*k strided slices.

  Same values as `nn.max_pool`; its gradient is elementwise selects instead of XLA's
  select-and-scatter (on 2 CPU cores: the 32x32x64 pool's forward+backward 146 -> 34 ms, the
  CCT-2/3x2 training step about 4% faster; benchmarks/RESULTS.md).
  """
  x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)),
              constant_values=-jnp.inf)
  out_h = (x.shape[1] - kernel) // stride + 1
  out_w = (x.shape[2] - kernel) // stride + 1
  out = None
  for i in range(kernel):
    for j in range(kernel):
      s = x[:, i:i + stride * (out_h - 1) + 1:stride, j:j + stride * (out_w - 1) + 1:stride]
      out = s if out is None else jnp.maximum(out, s)
  return out


class Conv(nn.Module):
  """A square conv with symmetric padding; parameters exactly as `nn.Conv` names them.

  Small convs on the image (3x3 on RGB or grey: at most 27 values per patch) run as im2col and one
  2-D matmul: on XLA's CPU backend that trains 1.5-2.3x faster than its native conv
  (benchmarks/RESULTS.md). Other convs use `lax.conv_general_dilated`.
  """
  features: int
  kernel_size: int
  stride: int
  padding: int
  use_bias: bool
  bias_init: Any = nn.initializers.zeros
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    k, s, p = self.kernel_size, self.stride, self.padding
    kernel = self.param('kernel', nn.initializers.variance_scaling(2.0, 'fan_in', 'normal'),
                        (k, k, x.shape[-1], self.features), self.param_dtype)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    if x.shape[-1] * k * k <= 27:
      b = x.shape[0]
      xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
      oh, ow = (xp.shape[1] - k) // s + 1, (xp.shape[2] - k) // s + 1
      cols = jnp.concatenate([xp[:, i:i + s * (oh - 1) + 1:s, j:j + s * (ow - 1) + 1:s]
                              for i in range(k) for j in range(k)], axis=-1)
      y = (cols.reshape(b * oh * ow, -1) @ kernel.reshape(-1, self.features)).reshape(
          b, oh, ow, self.features)
    else:
      y = jax.lax.conv_general_dilated(x, kernel, (s, s), ((p, p), (p, p)),
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    if self.use_bias:
      y = y + self.param('bias', self.bias_init, (self.features,), self.param_dtype).astype(y.dtype)
    return y


class Tokenizer(nn.Module):
  """`n_conv_layers` x [Conv -> activation -> MaxPool], then the H x W grid flattened row-major.

  CCT uses ReLU, max-pooling and no conv bias; CVT and ViT-Lite use one patch conv
  (kernel = stride = patch) with bias and neither activation nor pooling.
  Padding is symmetric `(p, p)` as in PyTorch: Flax's 'SAME' would shift the windows.
  """
  embedding_dim: int
  kernel_size: int
  stride: int
  padding: int
  n_conv_layers: int = 1
  in_planes: int = 64  # width between conv layers
  pooling_kernel_size: int = 3
  pooling_stride: int = 2
  pooling_padding: int = 1
  max_pool: bool = True
  activation: bool = True  # ReLU after each conv
  conv_bias: bool = False
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    widths = [self.in_planes] * (self.n_conv_layers - 1) + [self.embedding_dim]
    p, pp = self.padding, self.pooling_padding
    for i, width in enumerate(widths):
      fan_in = x.shape[-1] * self.kernel_size**2
      x = Conv(width, self.kernel_size, self.stride, p, self.conv_bias,
               bias_init=torch_conv_bias_init(fan_in), dtype=self.dtype,
               param_dtype=self.param_dtype, name=f'conv_layers_{i}')(x)
      if self.activation:
        x = nn.relu(x)
      if self.max_pool:
        x = max_pool(x, self.pooling_kernel_size, self.pooling_stride, pp)
    b, h, w, c = x.shape
    return x.reshape(b, h * w, c)

  def grid_size(self, img_size: Sequence[int]) -> Tuple[int, int]:
    """The token grid (rows, cols) this tokenizer makes of an image of `img_size` (H, W)."""
    out = []
    for size in img_size:
      for _ in range(self.n_conv_layers):
        size = conv_output_size(size, self.kernel_size, self.stride, self.padding)
        if self.max_pool:
          size = conv_output_size(size, self.pooling_kernel_size, self.pooling_stride,
                                  self.pooling_padding)
      out.append(size)
    return tuple(out)
