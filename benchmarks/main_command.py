"""The README's main command, on the clock: the digits config trained from scratch.

  python benchmarks/main_command.py [--install "fresh venv, base install"]

Runs `python train_main.py --config=configs/digits_cct.py --workdir=TMP` as a subprocess, as a
user does, with an empty compilation cache, and records the held-out top-1, the training loop's
own time (its "Done" line, compilation included) and the whole process's wall clock.
The last line printed is one JSON object.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import results  # pylint: disable=g-import-not-at-top,wrong-import-position


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='configs/digits_cct.py')
  parser.add_argument('--install', default='as installed',
                      help='how the environment was made, for the record')
  parser.add_argument('--results', default=results.default_path('main_command'),
                      help=results.HELP)
  args, overrides = parser.parse_known_args()
  with tempfile.TemporaryDirectory() as tmp:
    workdir = os.path.join(tmp, 'workdir')
    cmd = [sys.executable, os.path.join(ROOT, 'train_main.py'), f'--config={args.config}',
           f'--workdir={workdir}', f'--compilation_cache={os.path.join(tmp, "xla")}', *overrides]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode:
      raise SystemExit(f'the command failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}')
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      last = json.loads(f.read().splitlines()[-1])
  done = re.search(r'Done: \d+ steps in (\d+):(\d+):(\d+)', proc.stdout)
  train_s = int(done[1]) * 3600 + int(done[2]) * 60 + int(done[3]) if done else None
  figures = {'top1': last['eval_top1'], 'train_s': train_s, 'process_s': round(wall, 1)}
  print(json.dumps(figures))
  config = os.path.splitext(os.path.basename(args.config))[0]
  results.record(args.results, 'main_command', {
      'config': config + ''.join(f' {o}' for o in overrides), 'install': args.install}, figures)
  return 0


if __name__ == '__main__':
  sys.exit(main())
