"""Measurements as data: each benchmark run appends one JSON line to `benchmarks/results/NAME.jsonl`.

A line holds what was run and where, so that a figure can be traced and repeated:

  {"benchmark": "train_throughput", "date": "2026-12-07", "commit": "d70c832",
   "machine": "2-core Intel(R) Xeon(R) Processor (AVX-512), 24 GiB RAM, CPU only",
   "command": "python benchmarks/train_throughput.py --peer", "seed": null,
   "setting": {...what the run compared...}, "figures": {...what it measured...},
   "software": {"python": "3.11.7", "jax": "0.10.2", ...}}

`setting` names the variant (model, batch, side, ...): `render_performance.py` groups the runs of
one setting on one machine and shows their mean and spread in docs/performance.md. Every script's
`--results` flag names another file; `--results=` writes none.
"""

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from typing import Any, Dict, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(ROOT, 'benchmarks', 'results')
HELP = 'append the run\'s JSON line to this file (\'\': none)'


def default_path(benchmark: str) -> str:
  return os.path.join(RESULTS_DIR, f'{benchmark}.jsonl')


def commit() -> Optional[str]:
  """The checkout's short commit, with '+changes' when the tree differs from it; None outside git."""
  try:
    run = lambda *a: subprocess.run(['git', *a], cwd=ROOT, capture_output=True, text=True,
                                    check=True, timeout=10).stdout.strip()
    head = run('rev-parse', '--short', 'HEAD')
    return head + ('+changes' if run('status', '--porcelain', '--untracked-files=no') else '')
  except (OSError, subprocess.SubprocessError):
    return None


def _cpu() -> str:
  model, isa = platform.processor() or platform.machine(), ''
  try:
    with open('/proc/cpuinfo') as f:
      info = f.read()
    model = next((l.split(':', 1)[1].strip() for l in info.splitlines()
                  if l.startswith('model name')), model)
    isa = ' (AVX-512)' if ' avx512f' in info else ' (AVX2)' if ' avx2' in info else ''
  except OSError:
    pass
  return f'{os.cpu_count()}-core {model}{isa}'


def _memory_gib() -> Optional[int]:
  try:
    with open('/proc/meminfo') as f:
      return round(int(f.readline().split()[1]) / 2**20)
  except (OSError, ValueError, IndexError):
    return None


def _accelerator() -> str:
  """The accelerators JAX sees, if this process imported JAX; else 'CPU only'."""
  jax = sys.modules.get('jax')
  if jax is not None:
    found = [d for d in jax.devices() if d.platform != 'cpu']
    if found:
      return f'{len(found)} x {found[0].device_kind}'
  return 'CPU only'


def machine() -> str:
  memory = _memory_gib()
  return f'{_cpu()}, {memory} GiB RAM, {_accelerator()}' if memory else f'{_cpu()}, {_accelerator()}'


def command() -> str:
  """This process's command line, the script named from the repository root where it lies there."""
  script = os.path.abspath(sys.argv[0])
  if script.startswith(ROOT + os.sep):
    script = os.path.relpath(script, ROOT)
  return ' '.join(['python', shlex.quote(script)] + [shlex.quote(a) for a in sys.argv[1:]])


def software() -> Dict[str, str]:
  """Python's version and those of the array libraries this process imported."""
  found = {'python': platform.python_version()}
  for name in ('jax', 'jaxlib', 'flax', 'optax', 'torch', 'tensorflow'):
    module = sys.modules.get(name)
    if module is not None and getattr(module, '__version__', None):
      found[name] = module.__version__
  return found


def record(path: Optional[str], benchmark: str, setting: Dict[str, Any],
           figures: Dict[str, Any], *, seed: Optional[int] = None) -> Dict[str, Any]:
  """Appends one run's line to `path` (nothing when it is '' or None) and returns it."""
  line = {'benchmark': benchmark, 'date': datetime.date.today().isoformat(), 'commit': commit(),
          'machine': machine(), 'command': command(), 'seed': seed, 'setting': setting,
          'figures': figures, 'software': software()}
  if path:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'a') as f:  # one short write: a kill cannot leave half a line behind others
      f.write(json.dumps(line, sort_keys=True) + '\n')
    print(f'Recorded in {path}.', flush=True)
  return line


def load(path: str):
  """The lines of one results file (blank lines skipped); a bad line names its file and number."""
  lines = []
  with open(path) as f:
    for number, text in enumerate(f, 1):
      if text.strip():
        try:
          lines.append(json.loads(text))
        except json.JSONDecodeError as e:
          raise ValueError(f'{path}:{number}: not a JSON line ({e.msg}).') from None
  return lines
