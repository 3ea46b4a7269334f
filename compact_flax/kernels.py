"""Backend kernels: the same maths as the plain ops, written for XLA's CPU backend.

On CPU, XLA's native max-pool gradient, small image convolutions and three-axis Dense contractions
are slow (measured in docs/notes.md), so the model calls these functions, which choose
per backend at trace time:

  - `max_pool`: a running maximum with a hand-written gradient on CPU; `lax.reduce_window`
    elsewhere.
  - `conv2d`: 3x3 image convolutions as im2col and one matmul on CPU; `lax.conv_general_dilated`
    elsewhere (cuDNN on GPU, the MXU convolution on TPU).
  - `token_wise`: a Dense over (batch, tokens, dim) as one 2-D matmul on CPU.
  - `materialize_on_cpu`: stops XLA's CPU backend recomputing the first pool in a transposed
    copy; elsewhere the identity.
  - `recompute_on_tpu`: on TPU, the training step recomputes attention weights and the MLP's GELU
    in the backward pass instead of keeping them, which moves fewer bytes through HBM.

Every path computes the same values; `tests/test_models.py` checks logits and gradients of the
CPU and generic paths against each other. The backend is `jax.default_backend()` unless
`with kernels.target('tpu'):` says otherwise, as when compiling for a TPU or GPU from a CPU host.
"""

import contextlib
import contextvars
import functools
from typing import Tuple

import jax
import jax.numpy as jnp

_TARGET = contextvars.ContextVar('compact_flax_kernel_target', default=None)
_FUSED_ATTENTION = contextvars.ContextVar('compact_flax_fused_attention', default=True)


@contextlib.contextmanager
def target(platform: str, *, fused_attention: bool = True):
  """Traces the model for `platform` ('cpu', 'gpu', 'tpu', or 'generic' for export) whatever JAX's
  default backend; every platform but 'cpu' gets the plain XLA ops.

  Trace inside the context with a function not traced before: `jax.jit` caches traces per
  function, so one traced elsewhere keeps the kernels it was traced with.
  """
  token, fused = _TARGET.set(platform), _FUSED_ATTENTION.set(fused_attention)
  try:
    yield
  finally:
    _TARGET.reset(token)
    _FUSED_ATTENTION.reset(fused)


def platform() -> str:
  """The platform being traced for: 'cpu', 'gpu' or 'tpu'."""
  return _TARGET.get() or jax.default_backend()


def fused_attention() -> bool:
  """Whether cuDNN's fused attention may be used (on GPU); `target(..., fused_attention=False)`
  keeps the explicit softmax, e.g. to count a GPU step's work with another backend's cost model."""
  return platform() == 'gpu' and _FUSED_ATTENTION.get()


def on_cpu() -> bool:
  """Whether the model is being traced for XLA's CPU backend."""
  return platform() == 'cpu'


def recompute_on_tpu(fn):
  """`fn` under `jax.checkpoint` (nothing saved, recomputed in the backward pass) when traced for
  TPU, else `fn`: XLA's TPU cost model shows the train step moving fewer bytes that way
  (docs/notes.md). Elsewhere it is not measured to help, and on CPU it would cost time."""
  if platform() != 'tpu':
    return fn
  return jax.checkpoint(fn, policy=jax.checkpoint_policies.nothing_saveable)


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
  """Output length of a conv or pool along one axis (PyTorch's floor rule)."""
  return (size + 2 * padding - kernel) // stride + 1


def _windows(x, kernel: int, stride: int, padding: int, fill: float):
  """The kernel*kernel strided slices of NHWC `x` padded with `fill`, one per window offset,
  row-major: the patches of a conv (fill 0) or a max-pool (fill -inf), each output-sized."""
  oh = conv_output_size(x.shape[1], kernel, stride, padding)
  ow = conv_output_size(x.shape[2], kernel, stride, padding)
  x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), constant_values=fill)
  return [x[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
          for i in range(kernel) for j in range(kernel)]


# --- Max-pooling ---------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _max_pool_fn(kernel: int, stride: int, padding: int, in_hw: Tuple[int, int]):
  """Max-pooling for one geometry, with a hand-written gradient.

  Forward: a running maximum over the strided window slices that also records which window
  offset won (int8, output-sized). Backward: each offset's winners are shifted onto a
  stride-phase grid and the phases interleaved, so every op works on output-sized arrays.
  Ties go to the first offset, as in PyTorch. Being a `custom_vjp`, it supports reverse-mode
  differentiation only (`jax.grad`, `jax.vjp`), not `jax.jvp`.
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
  if on_cpu():
    return _max_pool_fn(kernel, stride, padding, tuple(x.shape[1:3]))(x)
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, kernel, kernel, 1),
                               (1, stride, stride, 1),
                               ((0, 0), (padding, padding), (padding, padding), (0, 0)))


# --- Convolution, Dense, layout ------------------------------------------------------------------

IM2COL_MAX_PATCH = 27  # values per patch: a 3x3 conv on RGB or grey images


def conv2d(x, kernel, stride: int, padding: int):
  """NHWC x HWIO -> NHWC with symmetric padding; im2col + matmul for small image convs on CPU."""
  k = kernel.shape[0]
  if on_cpu() and x.shape[-1] * k * k <= IM2COL_MAX_PATCH:
    cols = jnp.concatenate(_windows(x, k, stride, padding, 0.0), axis=-1)
    b, oh, ow, _ = cols.shape
    return (cols.reshape(b * oh * ow, -1) @ kernel.reshape(-1, kernel.shape[-1])).reshape(
        b, oh, ow, kernel.shape[-1])
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride),
                                      ((padding, padding), (padding, padding)),
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def token_wise(layer, x):
  """Applies `layer` (a Dense) to (batch, tokens, dim); on CPU as one (batch * tokens, dim)
  matrix, whose kernel gradient XLA's CPU backend computes several times faster."""
  if not on_cpu():
    return layer(x)
  b, n, d = x.shape
  return layer(x.reshape(b * n, d)).reshape(b, n, -1)


def materialize_on_cpu(x):
  """`x` unchanged, but written out once on XLA's CPU backend (elsewhere a no-op).

  The next conv's weight gradient reads its input transposed; XLA's CPU backend would fuse the
  pooling that made `x` into that transpose and recompute it in a cache-hostile order. A product
  with the identity is exact and is never fused into consumers.
  """
  if not on_cpu():
    return x
  eye = jax.lax.stop_gradient(jnp.eye(x.shape[-1], dtype=x.dtype))
  return jnp.einsum('nhwc,cd->nhwd', x, eye)
