"""Convolutional tokenizers: CCT's conv+pool stack and the CVT/ViT-Lite patch embedding.

The convolution and pooling kernels, chosen per backend, are in `kernels.py`.
"""

from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from compact_flax.kernels import conv2d, conv_output_size, materialize_on_cpu, max_pool

Dtype = Any


def _pair(v) -> Tuple[int, int]:
  return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def torch_conv_bias_init(fan_in: int):
  """PyTorch's default Conv2d bias init, uniform(+-1/sqrt(fan_in)); the official code keeps it."""
  bound = 1.0 / fan_in**0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class Conv(nn.Module):
  """A square conv with symmetric padding; parameters exactly as `nn.Conv` names them."""
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
    k = self.kernel_size
    kernel = self.param('kernel', nn.initializers.variance_scaling(2.0, 'fan_in', 'normal'),
                        (k, k, x.shape[-1], self.features), self.param_dtype)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    y = conv2d(x, kernel, self.stride, self.padding)
    if self.use_bias:
      y = y + self.param('bias', self.bias_init, (self.features,), self.param_dtype).astype(y.dtype)
    return y


class Tokenizer(nn.Module):
  """`n_conv_layers` x [Conv -> ReLU -> MaxPool], then the H x W grid flattened row-major.

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
      # ReLU and max commute exactly (ReLU is monotone), and the gradients agree where ReLU's
      # is defined, so pooling first runs ReLU on an array 4x smaller.
      if self.max_pool:
        x = max_pool(x, self.pooling_kernel_size, self.pooling_stride, pp)
      if self.activation:
        x = nn.relu(x)
      if i + 1 < len(widths):
        x = materialize_on_cpu(x)
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
