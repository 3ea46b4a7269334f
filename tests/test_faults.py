"""Faults on purpose: nothing lost, nothing silent. Each test is one way a run or a load can go
wrong, and checks what the user sees (one line, no traceback) and what is kept."""

import contextlib
import fcntl
import io
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import compact_flax
from compact_flax import checkpoint
from compact_flax import predict
from compact_flax import train
from compact_flax import train_checkpoints
from compact_flax import validation
from compact_flax import visualize
from compact_flax import workdir as workdir_lib
from configs import digits_cct

ROOT = pathlib.Path(__file__).resolve().parents[1]
PIL = pytest.importorskip('PIL.Image')


def _config(**fields):
  config = digits_cct.get_config()
  config.num_epochs, config.warmup_epochs = 2, 0
  config.update(fields)
  return config


def _cli(workdir, *overrides, timeout=300):
  env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED='1',
             XLA_FLAGS='--xla_force_host_platform_device_count=1')
  return subprocess.run([sys.executable, str(ROOT / 'train_main.py'),
                         f'--config={ROOT / "configs/digits_cct.py"}', f'--workdir={workdir}',
                         '--config.num_epochs=2', '--config.warmup_epochs=0', *overrides],
                        env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _one_line_error(run, *needles):
  assert run.returncode == 1, run.stdout[-2000:] + run.stderr[-2000:]
  assert 'Traceback' not in run.stderr, run.stderr[-3000:]
  errors = [l for l in run.stderr.splitlines() if l.startswith('error: ')]
  assert len(errors) == 1, run.stderr[-3000:]
  for needle in needles:
    assert needle in errors[0], errors[0]
  return errors[0]


def _steps(workdir):
  return checkpoint.steps(str(pathlib.Path(workdir) / 'checkpoints'))


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A 2-epoch digits workdir: steps 22 and 44, each evaluated."""
  workdir = tmp_path_factory.mktemp('trained')
  train.train_and_evaluate(_config(), str(workdir))
  assert _steps(workdir) == [22, 44]
  return workdir


@pytest.fixture
def copy(trained, tmp_path):
  target = tmp_path / 'run'
  shutil.copytree(trained, target, ignore=shutil.ignore_patterns('.lock'))
  return target


def _flip_bytes(step_dir):
  """Flips bytes all through the array data files of a saved step (not its metadata)."""
  for target in pathlib.Path(step_dir, 'state').rglob('d/*'):
    data = bytearray(target.read_bytes())
    for i in range(len(data) // 4, len(data), max(1, len(data) // 40)):
      data[i] ^= 0x5A
    target.write_bytes(bytes(data))


# --- Two runs, signals ---------------------------------------------------------------------------

def test_a_second_run_on_a_busy_workdir_stops_in_one_line(tmp_path):
  with workdir_lib.WorkdirLock(str(tmp_path)):
    run = _cli(tmp_path)
  _one_line_error(run, 'is in use by another run', f'pid {os.getpid()}')
  assert not (tmp_path / 'metrics.jsonl').exists() and not (tmp_path / 'checkpoints').exists()


def test_kill_9_leaves_no_stale_lock(tmp_path):
  holder = subprocess.Popen([sys.executable, '-c', 'import fcntl, sys, time\n'
                             f'f = open({str(tmp_path / workdir_lib.LOCK_FILE)!r}, "a+")\n'
                             'fcntl.flock(f, fcntl.LOCK_EX); print("locked", flush=True)\n'
                             'time.sleep(60)'], stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == 'locked'
  with pytest.raises(train.TrainingError, match='in use'):
    with workdir_lib.WorkdirLock(str(tmp_path)):
      pass
  holder.kill()
  holder.wait()
  with workdir_lib.WorkdirLock(str(tmp_path)):  # the kernel dropped the dead holder's lock
    with open(tmp_path / workdir_lib.LOCK_FILE) as f:
      with pytest.raises(OSError):
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_sigterm_during_start_up_exits_cleanly(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED='1')
  proc = subprocess.Popen([sys.executable, str(ROOT / 'train_main.py'),
                           f'--config={ROOT / "configs/digits_cct.py"}', f'--workdir={tmp_path}'],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  time.sleep(0.5)  # inside the imports
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  assert 'Stopped by signal before the first step' in out, out + err[-2000:]
  assert 'Traceback' not in err


# --- Damaged checkpoints -----------------------------------------------------------------------

def test_flipped_bytes_in_the_latest_step_resume_from_the_step_before(copy):
  _flip_bytes(copy / 'checkpoints/44')
  run = _cli(copy, '--config.num_epochs=3')
  assert run.returncode == 0, run.stderr[-3000:]
  assert 'warning: The checkpoint of step 44 is damaged' in run.stdout, run.stdout
  assert 'Resuming from step 22' in run.stdout
  (moved,) = os.listdir(copy / 'checkpoints/damaged')
  assert moved.startswith('44-'), 'the damaged step is kept, set aside'
  assert _steps(copy)[-1] == 66


def test_a_damaged_best_step_is_a_warning(copy):
  (copy / 'checkpoints/44/model/metadata').write_text('{"not json')
  run = _cli(copy, '--config.num_epochs=3')
  assert run.returncode == 0, run.stderr[-3000:]
  assert 'warning: The checkpoint of step 44 is damaged' in run.stdout
  assert 'Resuming from step 22' in run.stdout


def _rewrite_params(step_dir):
  """Writes well-formed but different arrays over a saved step's state: only the stored
  checksums can tell."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    state = ckptr.restore(step_dir, ocp.args.Composite(state=ocp.args.StandardRestore()))['state']
    state['params']['classifier']['fc']['bias'] = state['params']['classifier']['fc']['bias'] + 1
    shutil.rmtree(step_dir / 'state')
    ckptr.save(step_dir / 'tmp', ocp.args.Composite(state=ocp.args.StandardSave(state)))
  (step_dir / 'tmp/state').rename(step_dir / 'state')
  shutil.rmtree(step_dir / 'tmp')


def test_changed_arrays_fail_the_integrity_check(copy):
  _rewrite_params(copy / 'checkpoints/44')
  run = _cli(copy, '--config.num_epochs=3')
  assert run.returncode == 0, run.stderr[-3000:]
  assert 'step 44 is damaged' in run.stdout and 'integrity check' in run.stdout, run.stdout
  assert 'Resuming from step 22' in run.stdout


def test_load_model_skips_a_damaged_step_with_a_warning(copy, caplog):
  _rewrite_params(copy / 'checkpoints/44')
  model, variables = compact_flax.load_model(str(copy))
  assert 'failed its integrity check' in caplog.text and 'Trying' in caplog.text
  _, step22 = compact_flax.load_model(str(copy / 'checkpoints/22'))
  jax.tree.map(np.testing.assert_array_equal, variables, step22)
  with pytest.raises(checkpoint.CheckpointError, match='integrity'):
    compact_flax.load_model(str(copy / 'checkpoints/44'))  # asked for by name: an error


def test_a_half_deleted_step_is_cleared_at_start(copy):
  trash = copy / 'checkpoints' / train_checkpoints.TRASH
  shutil.copytree(copy / 'checkpoints/22', trash / '22')
  for f in list((trash / '22').rglob('*'))[::2]:  # a removal cut short
    if f.is_file():
      f.unlink()
  run = _cli(copy, '--config.num_epochs=3', '--config.keep_checkpoints=1')
  assert run.returncode == 0, run.stderr[-3000:]
  assert not os.listdir(trash), 'the interrupted removal was finished'
  assert 66 in _steps(copy) and 22 not in _steps(copy)


def test_metrics_rows_stay_unique_after_a_crash_and_resume(copy):
  shutil.rmtree(copy / 'checkpoints/44')  # the crash came after the evaluation, before the save
  run = _cli(copy, '--config.num_epochs=3')
  assert run.returncode == 0, run.stderr[-3000:]
  steps = [json.loads(l)['step'] for l in (copy / 'metrics.jsonl').read_text().splitlines()]
  assert steps == [22, 44, 66]
  tf = pytest.importorskip('tensorflow')
  newest = max((f for f in copy.iterdir() if f.name.startswith('events.out')),
               key=lambda f: f.stat().st_mtime)
  starts = [e.step for e in tf.compat.v1.train.summary_iterator(str(newest))
            if e.HasField('session_log') and e.session_log.status == e.session_log.START]
  assert starts == [23], 'TensorBoard drops the old rows of steps from 23 on'


# --- Bad values --------------------------------------------------------------------------------

@pytest.mark.parametrize('field,value', [
    ('num_epochs', -5), ('batch_size', -64), ('warmup_epochs', -1), ('batch_size', 0),
    ('eval_batch_size', 0), ('checkpoint_every_steps', 0), ('log_every_steps', 0),
    ('grad_accum_steps', 0), ('eval_every_epochs', 0), ('keep_checkpoints', 0),
    ('learning_rate', 0.0), ('label_smoothing', 1.5), ('aug.reprob', 2.0), ('dtype', 'float8'),
    ('aug.auto_augment', 'rand-m9-zz3'), ('aug.color_jitter', -0.4)])
def test_every_bad_value_is_named_before_anything_starts(field, value):
  config = digits_cct.get_config()
  config.update_from_flattened_dict({field: value})
  problems = validation.problems(config, 1)
  assert len(problems) == 1 and field.split('.')[-1] in problems[0], problems


def test_bad_values_on_the_command_line_are_one_line(tmp_path):
  _one_line_error(_cli(tmp_path, '--config.num_epochs=-5'), 'config.num_epochs is -5')
  _one_line_error(_cli(tmp_path, '--config.nmu_epochs=3'), 'no field', '--config.num_epochs')
  assert not (tmp_path / 'checkpoints').exists()


def test_any_model_argument_can_be_set_from_the_command_line(tmp_path):
  run = _cli(tmp_path, '--config.num_epochs=1', '--config.model_kwargs.num_heads=4',
             '--config.model_kwargs.mlp_ratio=2')
  assert run.returncode == 0, run.stderr[-3000:]
  assert json.loads((tmp_path / 'config.json').read_text())['model_kwargs']['num_heads'] == 4
  model, _ = compact_flax.load_model(str(tmp_path))
  assert (model.num_heads, model.mlp_ratio) == (4, 2.0)


def test_the_model_argument_list_covers_every_constructor_argument():
  from configs import common  # pylint: disable=import-outside-toplevel
  fields = set()
  for cls in (compact_flax.CCT, compact_flax.CVT, compact_flax.ViTLite):
    fields |= {f.name for f in __import__('dataclasses').fields(cls)}
  assert set(common.MODEL_ARGS) == fields - {'parent', 'name', 'dtype', 'param_dtype'}


def test_nan_stop_says_when_nothing_was_saved(tmp_path):
  with pytest.raises(train.TrainingError, match='Loss is .* No checkpoint had been saved'):
    train.train_and_evaluate(_config(learning_rate=1e12, checkpoint_every_steps=1000,
                                     log_every_steps=2), str(tmp_path))


# --- Disks ---------------------------------------------------------------------------------------

def test_a_checkpoint_that_cannot_fit_is_refused_and_nothing_partial_is_left(tmp_path, monkeypatch):
  real = shutil.disk_usage
  monkeypatch.setattr(train_checkpoints.shutil, 'disk_usage',
                      lambda p: real(p)._replace(free=1 << 20))
  with pytest.raises(train.TrainingError, match='Not enough space .* no checkpoint'):
    train.train_and_evaluate(_config(), str(tmp_path))
  assert not os.listdir(tmp_path / 'checkpoints')


@contextlib.contextmanager
def _tmpfs(path, options):
  path.mkdir()
  if subprocess.run(['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', str(path)],
                    capture_output=True, check=False).returncode:
    pytest.skip('cannot mount a tmpfs here (needs root)')
  try:
    yield path
  finally:
    subprocess.run(['umount', str(path)], check=False)


def test_a_full_disk_mid_write_is_one_line_and_the_last_checkpoint_stays(tmp_path, monkeypatch):
  monkeypatch.setattr(train_checkpoints, '_nbytes', lambda tree: 0)  # skip the space check
  err = io.StringIO()
  with _tmpfs(tmp_path / 'disk', 'size=4M') as disk, contextlib.redirect_stderr(err):
    with pytest.raises(train.TrainingError, match='No space left on the device') as info:
      train.train_and_evaluate(_config(num_epochs=3, keep_checkpoints=3), str(disk / 'w'))
    assert 'relaunch resumes from step 22' in str(info.value)
    assert [n for n in os.listdir(disk / 'w/checkpoints')] == ['22'], 'no partial checkpoint'
  assert 'Traceback' not in err.getvalue() and 'Event loop is closed' not in err.getvalue()


def test_a_read_only_workdir_is_one_line(tmp_path):
  if os.geteuid() == 0:
    with _tmpfs(tmp_path / 'ro', 'ro,size=1M') as ro:
      _one_line_error(_cli(ro / 'w'), 'Cannot write', 'Read-only')
  else:
    (tmp_path / 'ro').mkdir(mode=0o555)
    _one_line_error(_cli(tmp_path / 'ro' / 'w'), 'Cannot write')


# --- The zoo cache, .pth files -------------------------------------------------------------------

def _damage_truncate(d):
  for f in (d / 'variables').rglob('*'):
    if f.is_file() and f.stat().st_size > 1000:
      f.write_bytes(f.read_bytes()[:100])


def _damage_flip(d):
  files = [f for f in (d / 'variables').rglob('*') if f.is_file()]
  target = max(files, key=lambda f: f.stat().st_size)
  data = bytearray(target.read_bytes())
  data[len(data) // 2] ^= 0xFF
  target.write_bytes(bytes(data))


@pytest.mark.parametrize('damage', [
    _damage_truncate, _damage_flip,
    lambda d: shutil.rmtree(d / 'variables'),
    lambda d: (d / 'model/metadata').write_text('garbage'),
    lambda d: [shutil.rmtree(d), d.mkdir()]])
def test_a_damaged_zoo_cache_is_rebuilt(fixtures_dir, tmp_path, monkeypatch, capsys, damage):
  pytest.importorskip('torch')
  monkeypatch.setenv('COMPACT_FLAX_CACHE', str(tmp_path))
  path = str(fixtures_dir / 'cvt_2_4_32.pth')
  z = np.load(fixtures_dir / 'cvt_2_4_32.npz')
  x, ref = z['input_nchw'].transpose(0, 2, 3, 1), z['logits']
  compact_flax.load_pretrained('cvt_2_4_32', path)
  (cached,) = (tmp_path / 'converted').iterdir()
  damage(cached)
  model, variables = compact_flax.load_pretrained('cvt_2_4_32', path)
  assert 'converting again' in capsys.readouterr().err
  np.testing.assert_allclose(model.apply(variables, x), ref, rtol=1e-5, atol=1e-5)


class _Pickled:
  """An arbitrary Python object in a checkpoint, which the safe loader must refuse."""


def test_unreadable_pth_files_get_a_reason_and_no_unsafe_advice(tmp_path):
  torch = pytest.importorskip('torch')
  empty = tmp_path / 'empty.pth'
  empty.write_bytes(b'')
  with pytest.raises(checkpoint.CheckpointError, match='the file is empty'):
    compact_flax.convert.read_state_dict(str(empty))
  unsafe = tmp_path / 'object.pth'
  torch.save({'weights': torch.zeros(2), 'hook': _Pickled()}, unsafe)
  with pytest.raises(checkpoint.CheckpointError) as info:
    compact_flax.convert.read_state_dict(str(unsafe))
  assert 'Python objects' in str(info.value) and 'weights_only' not in str(info.value)


# --- Images and the command-line tools -----------------------------------------------------------

@pytest.fixture(scope='module')
def digits_dir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('predict')
  train.train_and_evaluate(_config(num_epochs=1), str(workdir))
  return workdir


def _modes(grey8):
  """The same picture in the image modes people have: (mode name, file suffix, PIL image)."""
  rgb8 = np.stack([grey8] * 3, -1)
  to16 = grey8.astype(np.uint16) * 257
  out = [('L', '.png', PIL.fromarray(grey8)),
         ('I;16', '.png', PIL.fromarray(to16)),
         ('I', '.tif', PIL.fromarray(to16.astype(np.int32))),
         ('F', '.tif', PIL.fromarray(grey8.astype(np.float32) / 255.)),
         ('P', '.png', PIL.fromarray(rgb8).convert('P', palette=PIL.ADAPTIVE, colors=256)),
         ('LA', '.png', PIL.fromarray(grey8).convert('LA')),
         ('CMYK', '.tif', PIL.fromarray(rgb8).convert('CMYK'))]
  return out


def test_every_image_mode_is_scaled_like_its_8_bit_picture(digits_dir, tmp_path):
  model, _ = compact_flax.load_model(str(digits_dir))
  data = predict.eval_spec(checkpoint.read_spec(str(digits_dir)), model)
  grey8 = (np.add.outer(np.arange(8), np.arange(8)) * 18).astype(np.uint8)
  reference = None
  for mode, suffix, img in _modes(grey8):
    path = tmp_path / f'{mode.replace(";", "")}{suffix}'
    img.save(path)
    with PIL.open(path) as check:
      assert check.mode == mode or (mode, check.mode) in (('I', 'I;16'), ('I;16', 'I')), mode
    x = predict.preprocess(str(path), model, data)
    reference = x if reference is None else reference
    scaled = np.asarray(data['std']) * 255
    np.testing.assert_allclose(x * scaled, reference * scaled, atol=1, err_msg=mode)


def test_command_line_tools_report_bad_input_in_one_line(digits_dir, tmp_path, capsys):
  image = tmp_path / 'digit.png'
  PIL.fromarray(np.zeros((8, 8), np.uint8)).save(image)
  broken = tmp_path / 'broken.png'
  broken.write_bytes(b'\x89PNG nothing')
  truncated = tmp_path / 'truncated'
  shutil.copytree(digits_dir / 'checkpoints/22', truncated)
  _damage = [f for f in (truncated / 'state').rglob('*') if f.is_file()]
  for f in _damage:
    f.write_bytes(f.read_bytes()[:10])
  cases = [
      (predict.main, ['--checkpoint', str(tmp_path / 'nowhere'), str(image)], 'not a compact-flax'),
      (predict.main, ['--checkpoint', str(truncated), str(image)], 'Cannot read the checkpoint'),
      (visualize.main, ['--checkpoint', str(digits_dir), str(broken), '--output',
                        str(tmp_path / 'out.png')], 'cannot read this image'),
      (visualize.main, ['--checkpoint', str(digits_dir), str(image), '--output',
                        str(tmp_path / 'missing/out.png')], 'does not exist'),
  ]
  for main, argv, needle in cases:
    assert main(argv) == 1, argv
    err = capsys.readouterr().err
    assert needle in err and 'Traceback' not in err and len(err.strip().splitlines()) == 1, err
  with pytest.raises(SystemExit):
    predict.main(['--checkpoint', str(digits_dir), '--top_k', '-1', str(image)])


def test_an_unknown_dataset_is_one_short_line(tmp_path):
  pytest.importorskip('tensorflow_datasets')
  line = _one_line_error(_cli(tmp_path, '--config.dataset=cifar11'), "Unknown dataset 'cifar11'",
                         'cifar10')
  assert len(line) < 400
