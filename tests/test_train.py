"""End-to-end training on the bundled digits: accuracy, resume, parallelism, failures."""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import threading

import jax
import numpy as np
import pytest

import compact_flax
from compact_flax import data
from compact_flax import devices
from compact_flax import input_pipeline
from compact_flax import optim
from compact_flax import steps
from compact_flax import train
from compact_flax import validation
from configs import digits_cct

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _env(devices=1):
  env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED='1')
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  return env


def _cmd(workdir, *overrides):
  return [sys.executable, str(ROOT / 'train_main.py'), '--config=' + str(ROOT / 'configs/digits_cct.py'),
          f'--workdir={workdir}', *overrides]


def _run(workdir, *overrides, devices=1, check=True):
  run = subprocess.run(_cmd(workdir, *overrides), env=_env(devices), capture_output=True,
                       text=True, timeout=600, check=False)
  if check:
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
  return run


def _steps(workdir):
  return sorted(int(d) for d in os.listdir(pathlib.Path(workdir) / 'checkpoints') if d.isdigit())


def _latest(workdir):
  return str(pathlib.Path(workdir) / 'checkpoints' / str(_steps(workdir)[-1]))


def _metrics(workdir):
  return [json.loads(line) for line in (pathlib.Path(workdir) / 'metrics.jsonl').read_text().splitlines()]


SHORT = ('--config.num_epochs=3', '--config.warmup_epochs=1', '--config.log_every_steps=5')


def test_digits_reaches_95_percent(tmp_path):
  config = digits_cct.get_config()
  record = train.train_and_evaluate(config, str(tmp_path))
  assert record['eval_top1'] >= 0.95, record
  assert record['step'] == 30 * (1438 // 64)
  lines = _metrics(tmp_path)
  assert len(lines) == 30
  for key in ('step', 'epoch', 'train_loss', 'eval_loss', 'eval_top1', 'eval_top5',
              'learning_rate', 'images_per_sec', 'num_devices'):
    assert key in lines[-1], key
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(tmp_path))
  # The workdir reloads in one call, and evaluates to the same accuracy.
  model, variables = compact_flax.load_model(_latest(tmp_path))
  assert model.n_input_channels == 1
  config.eval_only = True
  config.init_from = _latest(tmp_path)
  again = train.train_and_evaluate(config, str(tmp_path / 'eval'))
  assert again['eval_top1'] == pytest.approx(record['eval_top1'])
  # The per-layer checkpoint loads into the scanned encoder: the same accuracy.
  config.model_kwargs.scan_layers = True
  scanned = train.train_and_evaluate(config, str(tmp_path / 'eval_scanned'))
  assert scanned['eval_top1'] == pytest.approx(record['eval_top1'])


def test_compiled_programs_are_kept_for_the_next_run(tmp_path):
  """By default in the user's cache folder; `--compilation_cache=''` nowhere."""
  env = {k: v for k, v in _env().items() if k != 'JAX_COMPILATION_CACHE_DIR'}
  env['XDG_CACHE_HOME'] = str(tmp_path / 'home_cache')
  def run(name, *flags):
    out = subprocess.run(_cmd(tmp_path / name, '--config.num_epochs=1', *flags), env=env,
                         capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
  def cached(folder):
    return sorted(p.name.split('-')[0] for p in folder.glob('*-cache'))  # beside each: -atime
  run('default')
  assert 'jit_train_step' in cached(tmp_path / 'home_cache' / 'compact_flax' / 'xla')
  run('off', '--compilation_cache=', '--config.batch_size=32')  # new shapes, nothing kept
  assert cached(tmp_path / 'home_cache' / 'compact_flax' / 'xla').count('jit_train_step') == 1


@pytest.mark.parametrize('user_limit', [None, '-1', '1000000'])
def test_the_compilation_cache_is_bounded_unless_the_user_says(tmp_path, user_limit):
  env = {k: v for k, v in _env().items() if k != 'JAX_COMPILATION_CACHE_MAX_SIZE'}
  if user_limit is not None:
    env['JAX_COMPILATION_CACHE_MAX_SIZE'] = user_limit
  code = ('import jax, train_main; train_main.configure_compilation_cache(%r); '
          'print(jax.config.jax_compilation_cache_dir, jax.config.jax_compilation_cache_max_size)'
          % str(tmp_path))
  out = subprocess.run([sys.executable, '-c', code], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=120, check=True).stdout.split()
  assert out == [str(tmp_path), user_limit or str(4 << 30)]


def test_sigterm_and_relaunch_equals_uninterrupted(tmp_path):
  _run(tmp_path / 'straight', *SHORT)
  proc = subprocess.Popen(_cmd(tmp_path / 'killed', *SHORT), env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  for line in proc.stdout:
    if ' step 30/' in line:  # mid-epoch 2 of 3
      proc.send_signal(signal.SIGTERM)
      break
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode == 0, out
  assert 'Stopped by signal' in out
  stopped = _steps(tmp_path / 'killed')[-1]
  assert 30 <= stopped < 66
  resumed = _run(tmp_path / 'killed', *SHORT)
  assert f'Resuming from step {stopped}' in resumed.stdout
  _, a = compact_flax.load_model(_latest(tmp_path / 'straight'))
  _, b = compact_flax.load_model(_latest(tmp_path / 'killed'))
  jax.tree.map(np.testing.assert_array_equal, a, b)  # bit for bit
  assert _metrics(tmp_path / 'straight')[-1]['eval_loss'] == _metrics(
      tmp_path / 'killed')[-1]['eval_loss']


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_one_device_four_devices_two_processes_agree(tmp_path):
  args = ('--config.num_epochs=2', '--config.warmup_epochs=1')
  _run(tmp_path / 'one', *args)
  _run(tmp_path / 'four', *args, devices=4)
  port = _free_port()
  procs = [subprocess.Popen(
      _cmd(tmp_path / 'multi', *args, f'--coordinator_address=127.0.0.1:{port}',
           '--num_processes=2', f'--process_id={i}'), env=_env(2), stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), outs
  assert 'step' in outs[0] and 'step' not in outs[1], 'only process 0 prints progress'
  one, four, multi = (_metrics(tmp_path / d) for d in ('one', 'four', 'multi'))
  assert [m['num_devices'] for m in (one[-1], four[-1], multi[-1])] == [1, 4, 4]
  for other in (four, multi):
    for a, b in zip(one, other):
      np.testing.assert_allclose(b['train_loss'], a['train_loss'], rtol=1e-4)
      np.testing.assert_allclose(b['eval_loss'], a['eval_loss'], rtol=1e-4)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  run = _run(tmp_path, '--config.num_epochs=4', '--config.warmup_epochs=0',
             '--config.checkpoint_every_steps=10', '--config.learning_rate=1e12', check=False)
  assert run.returncode == 1
  assert 'Loss is' in run.stderr and 'at step' in run.stderr, run.stderr
  kept = _steps(tmp_path)
  if kept:  # whatever was saved is finite
    _, variables = compact_flax.load_model(_latest(tmp_path))
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(variables))


@pytest.mark.parametrize('overrides,devices,message', [
    (('--config.model=cct_2_3x2',), 1, "Unknown model 'cct_2_3x2'. Did you mean"),
    (('--config.dataset=cifar11',), 1, "Unknown dataset 'cifar11'"),
    (('--config.batch_size=66',), 4, 'does not divide over 4 devices'),
    (('--config.model_kwargs.img_size=32',), 1, 'set config.model_kwargs.img_size'),
    (('--config.init_from=/nonexistent',), 1, 'config.init_from'),
    (("--config.aug.mixup_mode=half",), 1, "config.aug.mixup_mode is 'half'"),
])
def test_bad_config_is_a_one_line_error(tmp_path, overrides, devices, message):
  run = _run(tmp_path, *overrides, devices=devices, check=False)
  assert run.returncode == 1
  assert message in run.stderr, run.stderr[-2000:]
  assert 'Traceback' not in run.stderr


def test_mismatched_or_broken_checkpoint_in_workdir(tmp_path):
  _run(tmp_path, '--config.num_epochs=1', '--config.warmup_epochs=0')
  run = _run(tmp_path, '--config.num_epochs=2', '--config.model=cct_4_3x2_32', check=False)
  assert run.returncode == 1 and 'use a new --workdir' in run.stderr, run.stderr[-2000:]
  step_dir = tmp_path / 'checkpoints/22/state'
  for f in step_dir.rglob('*'):
    if f.is_file() and f.stat().st_size > 1000:
      f.write_bytes(b'\0' * 100)
  run = _run(tmp_path, '--config.num_epochs=2', check=False)
  assert run.returncode == 1 and 'No intact checkpoint' in run.stderr, run.stderr[-2000:]
  (kept,) = os.listdir(tmp_path / 'checkpoints/damaged')
  assert kept.startswith('22-'), 'nothing saved is removed: the damaged step is set aside'


def _quiet_model_config():
  config = digits_cct.get_config()
  config.model_kwargs.dropout = 0.0
  config.model_kwargs.attention_dropout = 0.0
  config.model_kwargs.stochastic_depth = 0.0
  return config


def test_gradient_accumulation_gives_the_same_update():
  config = _quiet_model_config()
  source = input_pipeline.get_source('digits', config)
  model, _ = train.build_model(config, source)
  tx = optim.create_optimizer(config, optim.create_learning_rate_schedule(config, 22))
  state = steps.create_train_state(config, model, tx)
  batch = {'image': source.train_inputs['image'][:64], 'label': source.train_labels[:64]}
  outs = []
  for k in (1, 4):
    config.grad_accum_steps = k
    step = jax.jit(lambda s, b: steps.train_step(s, b, jax.random.key(0), model=model, tx=tx,
                                                 config=config))
    # No loop around the convolutions: on CPU, XLA gives convs in a while body a naive kernel.
    assert 'while' not in step.lower(state, batch).as_text()
    outs.append(step(state, batch))
  np.testing.assert_allclose(outs[0][1]['loss'], outs[1][1]['loss'], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               outs[0][0].params, outs[1][0].params)


def test_the_host_augmentation_and_the_step_draw_from_their_own_keys():
  """Over a few steps: the step's keys (dropout, in-step recipe, mix), the host augmentation's key
  for its batch, and each of their per-image splits are all different keys."""
  keys = []
  for step in range(4):
    for k in (*steps.step_keys(jax.random.key(7), step)[:3],
              input_pipeline.host_augment_key(7, step)):
      keys += [k, *jax.random.split(k, 8)]
  data = [tuple(np.asarray(jax.random.key_data(k)).tolist()) for k in keys]
  assert len(set(data)) == len(data)


@pytest.mark.parametrize('batch,eval_batch,cores,expected', [
    (128, 256, 2, 16), (64, 128, 2, 8), (128, 100, 2, 4), (4, 4, 2, 1), (96, 96, 2, 12),
    (1024, 1024, 2, 16), (1024, 1024, 16, 128)])
def test_cpu_device_count_takes_8_images_per_device_and_divides_both_batches(
    batch, eval_batch, cores, expected):
  count = devices.cpu_device_count(batch, eval_batch, cores)
  assert count == expected
  assert batch % count == 0 and eval_batch % count == 0


def test_the_cpu_split_is_the_default_for_images_of_32x32_and_more():
  assert devices.auto_cpu_devices(32) == devices.auto_cpu_devices((224, 160)) == -1
  assert devices.auto_cpu_devices(8) == devices.auto_cpu_devices((32, 16)) == 0
  assert devices.auto_cpu_devices(None) == 0  # text


def test_set_cpu_devices_respects_the_user_and_a_started_jax(monkeypatch):
  jax.devices()  # JAX has started in this process: too late to change the device count
  assert devices.set_cpu_devices(-1, 128) == 0
  monkeypatch.setenv('JAX_NUM_CPU_DEVICES', '2')
  assert devices.set_cpu_devices(4, 128) == 0
  assert devices.set_cpu_devices(0, 128) == 0


def test_a_split_cpu_keeps_a_spare_device_out_of_the_mesh_for_the_host_augmentation():
  code = '\n'.join([
      'import jax',
      'from compact_flax import devices, input_pipeline',
      'from configs import cifar10_cct7',
      'assert devices.set_cpu_devices(4, 128) == 4',
      'mesh = devices.make_mesh()',
      'assert mesh.size == 4 and len(jax.devices()) == 5, (mesh.size, jax.devices())',
      'spare = devices.host_device()',
      'assert spare not in set(mesh.devices.flat) and spare.platform == "cpu"',
      'assert input_pipeline.HostAugment(cifar10_cct7.get_config().aug, crop=True).cpu == spare',
  ])
  env = _env()
  del env['XLA_FLAGS']
  run = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                       timeout=300, check=False)
  assert run.returncode == 0, run.stderr[-3000:]


def test_train_main_cpu_devices_flag_splits_the_host(tmp_path):
  env = _env()
  del env['XLA_FLAGS']
  run = subprocess.run(_cmd(tmp_path, '--cpu_devices=-1', '--config.num_epochs=1',
                            '--config.warmup_epochs=0'), env=env, capture_output=True, text=True,
                       timeout=600, check=False)
  assert run.returncode == 0, run.stderr[-3000:]
  assert _metrics(tmp_path)[-1]['num_devices'] == 8  # digits: batch 64, eval batch 128


def test_ema_is_evaluated_alongside(tmp_path):
  config = digits_cct.get_config()
  config.num_epochs, config.warmup_epochs, config.ema_decay = 2, 1, 0.9
  record = train.train_and_evaluate(config, str(tmp_path))
  for key in ('ema_eval_top1', 'ema_eval_loss', 'ema_eval_top5'):
    assert key in record
  assert record['ema_eval_loss'] != record['eval_loss']


def test_synthetic_source_trains_without_tensorflow(tmp_path):
  run = subprocess.run(
      [sys.executable, '-c', 'import sys, builtins; real = builtins.__import__\n'
       'def guard(name, *a, **k):\n'
       '  assert not name.startswith("tensorflow"), name\n'
       '  return real(name, *a, **k)\n'
       'builtins.__import__ = guard\n'
       'from compact_flax import train\nfrom configs import common\n'
       'c = common.get_config(); c.model = "cct_2_3x2_32"; c.dataset = "synthetic"\n'
       'c.dataset_kwargs.num_train = 64; c.dataset_kwargs.num_eval = 32\n'
       'c.num_epochs, c.cooldown_epochs, c.warmup_epochs, c.batch_size = 1, 0, 0, 16\n'
       'c.eval_batch_size = 16; c.dtype = "float32"\n'
       f'r = train.train_and_evaluate(c, {str(tmp_path)!r}); assert r["step"] == 4, r\n'],
      env=_env(), capture_output=True, text=True, timeout=300, check=False)
  assert run.returncode == 0, run.stderr[-3000:]


def test_training_starts_from_a_checkpoint_on_several_devices(tmp_path):
  """`init_from` weights, loaded on one device, are replicated over the mesh before step 0."""
  _run(tmp_path / 'a', '--config.num_epochs=1', '--config.warmup_epochs=0', devices=2)
  _, first = compact_flax.load_model(_latest(tmp_path / 'a'))
  _run(tmp_path / 'b', '--config.num_epochs=1', '--config.warmup_epochs=0',
       f'--config.init_from={_latest(tmp_path / "a")}', '--config.weight_decay=0',
       *(f'--config.{rate}=1e-9' for rate in ('learning_rate', 'warmup_lr', 'min_lr')), devices=2)
  _, second = compact_flax.load_model(_latest(tmp_path / 'b'))
  assert _metrics(tmp_path / 'b')[-1]['num_devices'] == 2
  np.testing.assert_allclose(second['params']['classifier']['fc']['kernel'],
                             first['params']['classifier']['fc']['kernel'], atol=1e-6)


def test_init_from_with_another_class_count_reinitialises_the_head(tmp_path):
  config = digits_cct.get_config()
  config.num_epochs, config.warmup_epochs = 1, 0
  train.train_and_evaluate(config, str(tmp_path / 'a'))
  _, trained = compact_flax.load_model(str(tmp_path / 'a'))
  five = compact_flax.create_model('cct_2_3x2_32', **{**validation.model_kwargs(config),
                                                      'num_classes': 5})
  config.init_from = str(tmp_path / 'a')
  params = train.load_init_params(config, five)
  assert params['classifier']['fc']['kernel'].shape == (128, 5)
  np.testing.assert_array_equal(params['classifier']['norm']['scale'],
                                trained['params']['classifier']['norm']['scale'])


def test_a_workdir_in_the_earlier_checkpoint_layout_loads_and_resumes(tmp_path):
  """Workdirs from before the single manager kept `checkpoints/last` and `checkpoints/best`."""
  _run(tmp_path, '--config.num_epochs=1', '--config.warmup_epochs=0')
  root = tmp_path / 'checkpoints'
  (root / 'last').mkdir()
  (root / 'best').mkdir()
  shutil.copytree(root / '22', root / 'best' / '22')
  (root / '22').rename(root / 'last' / '22')
  _, variables = compact_flax.load_model(str(tmp_path))
  _, best = compact_flax.load_model(str(root / 'best' / '22'))
  jax.tree.map(np.testing.assert_array_equal, variables, best)
  run = _run(tmp_path, '--config.num_epochs=2', '--config.warmup_epochs=0')
  assert 'Resuming from step 22' in run.stdout, run.stdout
  assert _steps(tmp_path) == [44]
  assert (root / 'last' / '22').is_dir(), 'the earlier checkpoints are left as they were'


def assert_batch_matches_spec(source, batch_size: int, batch):
  """`source.train_batch_spec`, which the step is compiled for ahead, is what it gives."""
  spec = source.train_batch_spec(batch_size)
  assert sorted(spec) == sorted(batch)
  for k, v in batch.items():
    assert (spec[k].shape, spec[k].dtype) == (v.shape, v.dtype), (k, spec[k], v.shape, v.dtype)


def test_sources_declare_the_interface_and_the_config_is_saved(tmp_path):
  sharding = devices.batch_sharded(devices.make_mesh())
  for name in ('digits', 'synthetic', 'synthetic_text'):
    source = input_pipeline.get_source(name)
    assert isinstance(source, data.Source), type(source)
    batch = next(source.train_batches(0, batch_size=8, seed=0, sharding=sharding))
    assert_batch_matches_spec(source, 8, batch)
  config = digits_cct.get_config()
  config.num_epochs, config.warmup_epochs = 1, 0
  compiled = []  # the threads that compiled the train step: one, ahead, beside the init
  def listener(event, seconds, fun_name='', **kwargs):
    del seconds, kwargs
    if event == '/jax/core/compile/backend_compile_duration' and 'train_step' in fun_name:
      compiled.append(threading.current_thread().name)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    train.train_and_evaluate(config, str(tmp_path))
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert compiled == ['compact_flax-compile-step'], compiled
  saved = json.loads((tmp_path / 'config.json').read_text())
  assert saved['model'] == 'cct_2_3x2_32' and saved['num_epochs'] == 1
  assert saved == json.loads(json.dumps(config.to_dict()))


def test_profile_steps_writes_a_trace_of_those_steps(tmp_path):
  config = digits_cct.get_config()
  config.num_epochs, config.warmup_epochs, config.profile_steps = 1, 0, '3:5'
  train.train_and_evaluate(config, str(tmp_path))
  traces = list((tmp_path / 'profile').glob('plugins/profile/*/*.xplane.pb'))
  assert len(traces) == 1 and traces[0].stat().st_size > 0
