"""Pre-emption at random moments: two processes on this machine, SIGTERM to one of them.

  python benchmarks/preemption_trials.py --trials 20 --seed 0

Each trial launches `train_main.py` on the digits config as a two-process run (two CPU devices
each, gloo between them), sends SIGTERM to process 1 only, after a delay drawn uniformly from
`--delay` (covering start-up, compilation, steps, evaluations, saves and the exit), and waits.
A trial is sound when both processes exit 0 within `--timeout` seconds, process 0 reports a
stop (`Stopped by signal ...`), or the end of the run only where the signal came after the last
step, and the newest checkpoint is of the step where the run stopped or ended (none for a stop
before the first step). `tests/test_preemption.py` checks named moments; this looks for the unnamed ones.
One line per trial, the last one a JSON summary.
"""

import argparse
import collections
import json
import os
import pathlib
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Optional

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'benchmarks'))

import results  # pylint: disable=g-import-not-at-top,wrong-import-position
ARGS = ('--config.num_epochs=2', '--config.warmup_epochs=1', '--config.log_every_steps=5')


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def launch(workdir) -> list:
  """Processes 0 and 1 of a two-process digits run in `workdir`, their output piped."""
  env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED='1',
             XLA_FLAGS='--xla_force_host_platform_device_count=2')
  port = free_port()
  return [subprocess.Popen(
      [sys.executable, str(ROOT / 'train_main.py'), f'--config={ROOT / "configs/digits_cct.py"}',
       f'--workdir={workdir}', *ARGS, f'--coordinator_address=127.0.0.1:{port}',
       '--num_processes=2', f'--process_id={i}'], env=env, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]


def latest_checkpoint(workdir) -> Optional[pathlib.Path]:
  """The newest step's checkpoint folder in `workdir`, or None."""
  root = pathlib.Path(workdir) / 'checkpoints'
  steps = [int(d.name) for d in root.iterdir() if d.name.isdigit()] if root.is_dir() else []
  return root / str(max(steps)) if steps else None


def stopped_at(text: str) -> Optional[int]:
  """The step of the trainer's `Stopped by signal at step N` line in `text`, or None."""
  match = re.search(r'Stopped by signal at step (\d+);', text)
  return int(match.group(1)) if match else None


def _timed_lines(stream, into: list):
  for line in stream:
    into.append((time.monotonic(), line.rstrip('\n')))


def trial(delay: float, timeout: float) -> dict:
  """One two-process run with SIGTERM to process 1 after `delay` seconds."""
  lines = []
  with tempfile.TemporaryDirectory() as workdir:
    procs = launch(workdir)
    reader = threading.Thread(target=_timed_lines, args=(procs[0].stdout, lines), daemon=True)
    reader.start()
    time.sleep(delay)
    signalled = time.monotonic()
    procs[1].send_signal(signal.SIGTERM)
    try:
      procs[0].wait(timeout=timeout)
      procs[1].communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
      for p in procs:
        p.kill()
        p.wait()
      return {'delay_s': round(delay, 1), 'outcome': 'hang', 'exit_codes': None}
    reader.join()
    newest = latest_checkpoint(workdir)
  saved = int(newest.name) if newest else None
  codes = [p.returncode for p in procs]
  ending = [l for _, l in lines if l.startswith(('Stopped by signal', 'Done:'))]
  # Process 0 prints the last step's progress line before that step's evaluation and stop
  # decision, which process 1 cannot pass without it: a signal sent before the line must stop.
  last_step = [(t, int(m.group(1))) for t, l in lines
               for m in [re.search(r' step (\d+)/\1 ', l)] if m]
  if codes != [0, 0] or len(ending) != 1:
    outcome = 'failed'
  elif ending[0].startswith('Done:'):
    if not last_step or last_step[0][0] >= signalled:
      outcome = 'missed the signal'
    else:
      outcome = 'ran to the end' if saved == last_step[0][1] else 'failed'
  elif 'before the first step' in ending[0]:
    outcome = 'stopped before the first step' if saved is None else 'failed'
  else:  # one checkpoint, at the step where the processes stopped
    step = stopped_at(ending[0])
    outcome = f'stopped at step {step}' if saved == step else 'failed'
  return {'delay_s': round(delay, 1), 'outcome': outcome, 'exit_codes': codes}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--trials', type=int, default=20)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--delay', type=float, nargs=2, default=(0.5, 26.0),
                      help='the range of the delay before SIGTERM, in seconds')
  parser.add_argument('--timeout', type=float, default=180.0,
                      help='seconds after the signal before a trial counts as a hang')
  parser.add_argument('--results', default=results.default_path('preemption_trials'),
                      help=results.HELP)
  args = parser.parse_args()
  rng = random.Random(args.seed)
  outcomes, classes = collections.Counter(), collections.Counter()
  for i in range(args.trials):
    result = trial(rng.uniform(*args.delay), args.timeout)
    sound = result['outcome'] not in ('hang', 'failed', 'missed the signal')
    outcomes['sound' if sound else result['outcome']] += 1
    classes[re.sub(r'stopped at step \d+', 'stopped during training', result['outcome'])] += 1
    print(f'trial {i}: SIGTERM after {result["delay_s"]} s: {result["outcome"]}, exit codes '
          f'{result["exit_codes"]}', flush=True)
  print(json.dumps({'trials': args.trials, 'seed': args.seed, **outcomes}))
  results.record(args.results, 'preemption_trials',
                 {'processes': 2, 'delay_s': f'{args.delay[0]:g}-{args.delay[1]:g}'},
                 {'trials': args.trials, 'sound': outcomes['sound'],
                  **{k.replace(' ', '_'): v for k, v in classes.items()}}, seed=args.seed)
  return 0 if outcomes['sound'] == args.trials else 1


if __name__ == '__main__':
  sys.exit(main())
