"""Convolutional tokenizers: CCT's conv+pool stack and the CVT/ViT-Lite patch embedding."""

import functools
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


def _windows(x, kernel: int, stride: int, padding: int, fill: float):
  """The kernel*kernel strided slices of NHWC `x` padded with `fill`, one per window offset,
  row-major: the patches of a conv (fill 0) or a max-pool (fill -inf), each output-sized."""
  oh = conv_output_size(x.shape[1], kernel, stride, padding)
  ow = conv_output_size(x.shape[2], kernel, stride, padding)
  x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), constant_values=fill)
  return [x[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
          for i in range(kernel) for j in range(kernel)]


@functools.lru_cache(maxsize=None)
def _max_pool_fn(kernel: int, stride: int, padding: int, in_hw: Tuple[int, int]):
  """Max-pooling for one geometry, with a hand-written gradient.

  Forward: a running maximum over the strided window slices that also records which window
  offset won (int8, output-sized). Backward: each offset's winners are shifted onto a
  stride-phase grid and the phases interleaved, so every op works on output-sized arrays.
  XLA's own gradients of `reduce_window` (select-and-scatter) and of a chain of maxima
  (nested selects) were the two slowest ops of the CCT-2 training step on CPU
  (benchmarks/RESULTS.md). Ties go to the first offset, as in PyTorch. Being a `custom_vjp`, it
  supports reverse-mode differentiation only (`jax.grad`, `jax.vjp`), not `jax.jvp`.
  """
  k, s, p = kernel, stride, padding
  idx_dtype = jnp.int8 if k * k < 128 else jnp.int32

  def forward(x):
    out = idx = None
    for n, w in enumerate(_windows(x, k, s, p, -jnp.inf)):
      if out is None:
        out, idx = w, jnp.zeros(w.shape, idx_dtype)
      else:
        take = w > out
        out, idx = jnp.where(take, w, out), jnp.where(take, jnp.asarray(n, idx_dtype), idx)
    return out, idx

  @jax.custom_vjp
  def pool(x):
    return forward(x)[0]

  def backward(idx, g):
    b, oh, ow, c = g.shape
    qh, qw = oh + (k - 1) // s, ow + (k - 1) // s  # phase-grid size covering every window
    zero = jnp.zeros((), g.dtype)
    phases = []
    for row_phase in range(s):
      row = []
      for col_phase in range(s):  # the window offsets (i, j) that land on this phase
        terms = [jnp.pad(jnp.where(idx == i * k + j, g, zero),
                         ((0, 0), (i // s, qh - oh - i // s), (j // s, qw - ow - j // s), (0, 0)))
                 for i in range(row_phase, k, s) for j in range(col_phase, k, s)]
        row.append(sum(terms[1:], terms[0]) if terms else jnp.zeros((b, qh, qw, c), g.dtype))
      phases.append(jnp.stack(row, axis=3))
    dx = jnp.stack(phases, axis=2).reshape(b, qh * s, qw * s, c)
    h, w = in_hw
    extra_h, extra_w = max(0, p + h - qh * s), max(0, p + w - qw * s)
    dx = jnp.pad(dx, ((0, 0), (0, extra_h), (0, extra_w), (0, 0)))
    return (dx[:, p:p + h, p:p + w],)

  pool.defvjp(forward, backward)
  return pool


def max_pool(x, kernel: int, stride: int, padding: int):
  """PyTorch's `MaxPool2d(kernel, stride, padding)` on NHWC: -inf padding, floor output size."""
  return _max_pool_fn(kernel, stride, padding, tuple(x.shape[1:3]))(x)


def materialize_on_cpu(x):
  """`x` unchanged, but written out once on XLA's CPU backend (elsewhere a no-op).

  The next conv's weight gradient reads its input transposed; XLA's CPU backend would fuse the
  pooling that made `x` into that transpose and recompute it in a cache-hostile order (14 of
  228 ms per CCT-2 step). A product with the identity is exact and is never fused into consumers.
  """
  if jax.default_backend() != 'cpu':
    return x
  eye = jax.lax.stop_gradient(jnp.eye(x.shape[-1], dtype=x.dtype))
  return jnp.einsum('nhwc,cd->nhwd', x, eye)


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
      cols = jnp.concatenate(_windows(x, k, s, p, 0.0), axis=-1)  # im2col
      b, oh, ow, _ = cols.shape
      y = (cols.reshape(b * oh * ow, -1) @ kernel.reshape(-1, self.features)).reshape(
          b, oh, ow, self.features)
    else:
      y = jax.lax.conv_general_dilated(x, kernel, (s, s), ((p, p), (p, p)),
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
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
