"""Convolutional tokenizers: CCT's conv+pool stack and the CVT/ViT-Lite patch embedding."""

from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
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
    import jax
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
      x = nn.Conv(
          width, (self.kernel_size, self.kernel_size), strides=self.stride,
          padding=((p, p), (p, p)), use_bias=self.conv_bias,
          kernel_init=nn.initializers.variance_scaling(2.0, 'fan_in', 'normal'),
          bias_init=torch_conv_bias_init(fan_in),
          dtype=self.dtype, param_dtype=self.param_dtype,
          name=f'conv_layers_{i}')(x)
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
