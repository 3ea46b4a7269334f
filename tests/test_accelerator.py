"""On a GPU or TPU: the train step in the dtype 'auto' picks, float16 with its loss scale, the
accelerator's kernels against the CPU's, and cuDNN's fused attention against the explicit one.

Every test here skips on a CPU, saying so; `benchmarks/device_check.py` runs them where an
accelerator is (`pytest -m accelerator`, with JAX free to use it).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compact_flax
from compact_flax import devices
from compact_flax import kernels
from compact_flax import merge
from compact_flax import optim
from compact_flax import precision
from compact_flax import steps
from configs import cifar10_cct7

pytestmark = [
    pytest.mark.accelerator,
    pytest.mark.skipif(jax.default_backend() == 'cpu',
                       reason='needs a GPU or TPU (JAX sees only the CPU here; the test suite '
                       'pins JAX_PLATFORMS=cpu unless it is set)'),
]


def _train_steps(dtype: str, n: int = 5, batch: int = 64):
  config = cifar10_cct7.get_config()
  config.model, config.dtype = 'cct_2_3x2_32', dtype
  model = compact_flax.create_model(config.model, dtype=precision.compute_dtype(dtype))
  mesh = devices.make_mesh(jax.devices()[:1])
  tx = optim.create_optimizer(config, optim.create_learning_rate_schedule(config, 100))
  state = steps.init_state(config, model, tx, mesh)
  step = steps.make_train_step(config, model, tx, mesh, steps_per_epoch=100)
  rng = np.random.default_rng(0)
  batch = {'image': jnp.asarray(rng.integers(0, 256, (batch, 32, 32, 3)), jnp.uint8),
           'label': jnp.asarray(rng.integers(0, 10, batch), jnp.int32)}
  losses = []
  for i in range(n):
    state, metrics = step(state, batch, jax.random.key(i))
    losses.append(float(metrics['loss']))
  return model, state, losses


def test_auto_is_bfloat16_or_float16_here_and_trains():
  chosen = precision.resolve('auto')
  assert chosen in ('bfloat16', 'float16')
  model, state, losses = _train_steps('auto')
  assert model.dtype == precision.DTYPES[chosen]
  assert all(np.isfinite(losses)), losses
  assert (state.loss_scale is not None) == (chosen == 'float16')


def test_float16_trains_with_its_loss_scale():
  _, state, losses = _train_steps('float16', n=8)
  assert np.isfinite(losses[-1]) and float(state.loss_scale.scale) >= 1.0


def test_the_accelerators_kernels_give_the_cpus_logits():
  model = compact_flax.create_model('cct_7_3x1_32')
  variables = merge.init_variables(model)
  x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
  here = np.asarray(jax.jit(model.apply)(variables, x))
  cpu = jax.devices('cpu')[0]
  with jax.default_device(cpu), kernels.target('cpu'):
    there = np.asarray(jax.jit(lambda v, x: model.apply(v, x))(
        jax.device_put(variables, cpu), jax.device_put(x, cpu)))
  # float32 matmuls on a GPU may use TF32 by default: compare at that precision.
  np.testing.assert_allclose(here, there, rtol=2e-2, atol=2e-2)


@pytest.mark.skipif(jax.default_backend() != 'gpu', reason="cuDNN's fused attention is a GPU's")
def test_fused_attention_gives_the_explicit_softmaxs_logits():
  model = compact_flax.create_model('cct_7_3x1_32', dtype=jnp.bfloat16)
  variables = merge.init_variables(model)
  x = np.random.default_rng(1).normal(size=(8, 32, 32, 3)).astype(np.float32)
  fused = np.asarray(jax.jit(model.apply)(variables, x), np.float32)
  with kernels.target('gpu', fused_attention=False):
    explicit = np.asarray(jax.jit(functools.partial(model.apply))(variables, x), np.float32)
  np.testing.assert_allclose(fused, explicit, rtol=5e-2, atol=5e-2)
