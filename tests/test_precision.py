"""The compute dtype per device, and float16 training with a dynamic loss scale."""

import functools
import os
import pathlib
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compact_flax
from compact_flax import checkpoint
from compact_flax import devices
from compact_flax import optim
from compact_flax import precision
from compact_flax import steps
from compact_flax import train
from compact_flax import train_checkpoints
from configs import digits_cct

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize('platform,capability,expected', [
    ('tpu', None, 'bfloat16'), ('gpu', '9.0', 'bfloat16'), ('gpu', '8.0', 'bfloat16'),
    ('gpu', '8.6', 'bfloat16'), ('gpu', '7.5', 'float16'), ('gpu', '7.0', 'float16'),
    ('cpu', None, 'float32')])
def test_auto_picks_bfloat16_where_it_exists_float16_on_older_gpus(platform, capability, expected):
  assert precision.resolve('auto', platform, capability) == expected
  assert precision.resolve('float16', platform, capability) == 'float16'


def _setup(**overrides):
  config = digits_cct.get_config()
  config.dtype = 'float16'
  config.update(overrides)
  model = compact_flax.create_model('cct_2_3x2_32', img_size=8, n_input_channels=1,
                                    n_conv_layers=1, dtype=precision.compute_dtype('float16'))
  mesh = devices.make_mesh(jax.devices()[:1])
  tx = optim.create_optimizer(config, optim.create_learning_rate_schedule(config, 10))
  state = steps.init_state(config, model, tx, mesh)
  step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx, config=config))
  rng = np.random.default_rng(0)
  batch = {'image': jnp.asarray(rng.normal(size=(8, 8, 8, 1)), jnp.float32),
           'label': jnp.asarray(rng.integers(0, 10, 8), jnp.int32)}
  return state, step, batch


def test_a_non_finite_gradient_skips_the_step_and_halves_the_scale():
  # A scale this large makes the scaled loss, and so every gradient, infinite.
  state, step, batch = _setup(loss_scale_init=2.0**127)
  assert state.loss_scale is not None
  new, metrics = step(state, batch, jax.random.key(0))
  assert not bool(precision.all_finite(metrics['grad_norm']))
  assert float(new.loss_scale.scale) == 2.0**126
  assert int(new.step) == 1 and bool(metrics['skipped'])
  jax.tree.map(np.testing.assert_array_equal, (new.params, new.opt_state),
               (state.params, state.opt_state))
  # A finite scale then trains: the parameters move.
  finite, metrics = step(new.replace(loss_scale=precision.LossScale.create(1024., 2000)), batch,
                         jax.random.key(0))
  assert np.isfinite(float(metrics['loss'])) and float(finite.loss_scale.scale) == 1024.
  assert not bool(metrics['skipped'])
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: bool((a != b).any()), finite.params,
                                       state.params))
  assert any(moved)


def test_the_scale_doubles_after_a_run_of_finite_steps_and_never_falls_below_one():
  state, step, batch = _setup(loss_scale_init=256., loss_scale_growth_interval=3)
  scales = []
  for i in range(7):
    state, _ = step(state, batch, jax.random.key(i))
    scales.append(float(state.loss_scale.scale))
  assert scales == [256., 256., 512., 512., 512., 1024., 1024.]
  assert float(precision.LossScale.create(1., 5).update(jnp.asarray(False)).scale) == 1.


def test_float32_and_bfloat16_states_carry_no_loss_scale():
  config = digits_cct.get_config()
  model = compact_flax.create_model('cct_2_3x2_32', img_size=8, n_input_channels=1,
                                    n_conv_layers=1)
  tx = optim.create_optimizer(config, optim.create_learning_rate_schedule(config, 10))
  assert steps.create_train_state(config, model, tx).loss_scale is None


def test_float16_digits_reaches_95_percent(tmp_path):
  config = digits_cct.get_config()
  config.dtype = 'float16'
  record = train.train_and_evaluate(config, str(tmp_path))
  assert record['eval_top1'] >= 0.95, record


def _cmd(workdir, *overrides):
  return [sys.executable, str(ROOT / 'train_main.py'), f'--config={ROOT / "configs/digits_cct.py"}',
          f'--workdir={workdir}', '--config.dtype=float16', '--config.num_epochs=3',
          '--config.warmup_epochs=1', '--config.log_every_steps=5',
          '--config.loss_scale_growth_interval=7', *overrides]


def _latest(workdir):
  return str(max((p for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit()),
                 key=lambda p: int(p.name)))


def test_a_float16_run_resumes_with_its_loss_scale_bit_for_bit(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED='1')
  straight = subprocess.run(_cmd(tmp_path / 'straight'), env=env, capture_output=True, text=True,
                            timeout=600, check=False)
  assert straight.returncode == 0, straight.stderr[-3000:]
  assert 'float16 compute' in straight.stdout
  proc = subprocess.Popen(_cmd(tmp_path / 'killed'), env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  for line in proc.stdout:
    if ' step 30/' in line:
      proc.send_signal(signal.SIGTERM)
      break
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode == 0 and 'Stopped by signal' in out, out
  resumed = subprocess.run(_cmd(tmp_path / 'killed'), env=env, capture_output=True, text=True,
                           timeout=600, check=False)
  assert resumed.returncode == 0 and 'Resuming from step' in resumed.stdout, resumed.stderr
  states = []
  for run in ('straight', 'killed'):
    model, _ = compact_flax.load_model(str(tmp_path / run))
    config = digits_cct.get_config()
    config.dtype = 'float16'
    config.loss_scale_growth_interval = 7
    tx = optim.create_optimizer(config, optim.create_learning_rate_schedule(config, 22))
    mesh = devices.make_mesh(jax.devices()[:1])
    model = model.clone(dtype=jnp.float16)
    spec = checkpoint.read_spec(_latest(tmp_path / run))
    with train_checkpoints.TrainCheckpoints(str(tmp_path / run), spec, keep=3) as checkpoints:
      states.append(checkpoints.restore_latest(steps.abstract_state(config, model, tx, mesh)))
  straight_state, resumed_state = states
  assert int(straight_state.step) == int(resumed_state.step) == 66
  assert float(straight_state.loss_scale.scale) != 2.0**15  # the scale moved during the run
  jax.tree.map(np.testing.assert_array_equal, straight_state, resumed_state)
