"""Pre-emption on several hosts: SIGTERM reaches one of two processes at various moments; both stop
at the same step, exit 0, and the relaunch ends exactly where an uninterrupted run ends."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from benchmarks.preemption_trials import free_port, latest_checkpoint, launch, stopped_at
import compact_flax

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _finish(procs, timeout=300):
  outs = [p.communicate(timeout=timeout)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs
  return outs


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('straight')
  _finish(launch(workdir))
  return compact_flax.load_model(str(latest_checkpoint(workdir)))[1]


def test_sigterm_right_after_joining_the_other_processes_is_caught():
  """JAX's preemption service, on by default, would replace the trainer's SIGTERM handler when the
  processes join, and a notice between then and the first step would be lost."""
  code = ('import os, signal, time, train_main; '
          'train_main.join_processes("127.0.0.1:%d", 1, 0); '
          'os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.2); '
          'print("caught:", train_main.STOP.is_set())' % free_port())
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
  assert out.returncode == 0 and 'caught: True' in out.stdout, out.stdout + out.stderr[-2000:]


# (the line of process 0 after which process 1 alone gets SIGTERM): during compilation,
# mid-epoch, right before an evaluation, during the save after it, late in the run.
MOMENTS = {'compile': 'parameters;', 'mid-epoch': ' step 10/', 'evaluation': ' step 20/',
           'save': '  eval_loss', 'late': ' step 35/'}


# The relaunch is compared with the uninterrupted run after a stop mid-epoch and after a stop
# during a save (the resume path is the same after the others; tests/test_train.py relaunches
# after a one-process stop too).
RELAUNCHED = ('mid-epoch', 'save')


@pytest.mark.parametrize('moment', sorted(MOMENTS))
def test_sigterm_to_one_process_stops_both_at_one_step(moment, uninterrupted, tmp_path):
  procs = launch(tmp_path)
  lines = []
  for line in procs[0].stdout:
    lines.append(line)
    if MOMENTS[moment] in line:
      procs[1].send_signal(signal.SIGTERM)
      break
  outs = _finish(procs)
  out = ''.join(lines) + outs[0]
  assert 'Stopped by signal' in out, out
  if 'before the first step' not in out:
    assert int(latest_checkpoint(tmp_path).name) == stopped_at(out), 'one checkpoint, at that step'
  if moment not in RELAUNCHED:
    return
  _finish(launch(tmp_path))  # the relaunch
  _, resumed = compact_flax.load_model(str(latest_checkpoint(tmp_path)))
  jax.tree.map(np.testing.assert_array_equal, resumed, uninterrupted)


def test_sigterm_while_the_processes_exit_leaves_exit_code_0(tmp_path):
  """Python restores SIGTERM's default action while it shuts down: a notice that comes after the
  run has finished must not turn its clean exit into a kill."""
  procs = launch(tmp_path)
  for line in procs[0].stdout:
    if line.startswith('Time by phase'):
      break
  sent, deadline = 0, time.time() + 120
  while procs[1].poll() is None and time.time() < deadline:
    procs[1].send_signal(signal.SIGTERM)
    sent += 1
    time.sleep(0.001)
  assert sent, 'process 1 had exited before the first signal'
  _finish(procs)
