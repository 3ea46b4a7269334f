"""Everything worth knowing from a lent accelerator, in one command that fits its lease.

  python benchmarks/device_check.py --out DIR [--budget_s 480] [--peer_repo DIR]
  python benchmarks/device_check.py --out DIR --dry_run      # every part, tiny, on this CPU

Writes DIR/device_check.json with one key per part (each present; `null` with a reason in
`skipped` where a part could not run or ran out of time), DIR/device_check.log (every part's
output) and DIR/results.jsonl (the figures as results lines, for benchmarks/results/):

  device      the device JAX sees, its driver and memory (nvidia-smi where there is one)
  versions    Python, jax, jaxlib, flax, optax, orbax-checkpoint, chex, numpy, torch, plugins
  tests       the suite's accelerator tests (`pytest -m accelerator`, which skip on a CPU)
  throughput  the train step of cct_7_3x1_32 at batch 128 and 1024 in bfloat16 and float16:
              images/s and model FLOP utilisation (`train_throughput.py`'s measurement)
  peer        the official PyTorch model (`--peer_repo`: a checkout of
              SHI-Labs/Compact-Transformers; else vit-pytorch's CCT) with AMP at the same batches
  epoch       one CIFAR-10-shaped epoch end to end: 50,000 in-memory synthetic uint8 images, the
              full recipe with the augmentation on the device, through `train_and_evaluate`
  memory      the compiler's predicted memory for the batch-1024 bfloat16 step beside the
              measured peak of running it

Each part runs in its own process with its share of `--budget_s` as a timeout, so one that hangs
or runs long costs only its share, and what finished is written as it finishes. No TensorFlow and
no download is needed. `--dry_run` runs every part at a tiny size on whatever JAX sees (the test
suite runs it on a CPU, so the script cannot rot before an accelerator arrives).
"""

import argparse
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

PARTS = ('device', 'versions', 'tests', 'throughput', 'peer', 'epoch', 'memory')
# Each part's share of the budget, and its sizes in a real run and in a dry run.
SHARES = {'device': 0.02, 'versions': 0.02, 'tests': 0.16, 'throughput': 0.30, 'peer': 0.18,
          'epoch': 0.22, 'memory': 0.10}
SIZES = {
    False: {'model': 'cct_7_3x1_32', 'batches': (128, 1024), 'dtypes': ('bfloat16', 'float16'),
            'steps': 20, 'repeats': 3, 'warmup': 5, 'epoch_images': 50_000, 'eval_images': 1000,
            'memory_batch': 1024},
    True: {'model': 'cct_2_3x2_32', 'batches': (8,), 'dtypes': ('bfloat16', 'float16'),
           'steps': 2, 'repeats': 1, 'warmup': 1, 'epoch_images': 256, 'eval_images': 64,
           'memory_batch': 8},
}
PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'chex', 'numpy', 'ml-collections',
            'torch', 'jax-cuda12-plugin', 'jax-cuda13-plugin', 'jax-cuda12-pjrt',
            'jax-cuda13-pjrt', 'libtpu', 'tensorflow')


def part_device(args, sizes):
  import jax  # pylint: disable=g-import-not-at-top
  device = jax.devices()[0]
  out = {'platform': device.platform, 'device_kind': device.device_kind,
         'count': jax.device_count(), 'compute_capability': getattr(
             device, 'compute_capability', None), 'host_cpus': os.cpu_count()}
  stats = device.memory_stats() if hasattr(device, 'memory_stats') else None
  if stats:
    out['memory_bytes'] = stats.get('bytes_limit')
  if shutil.which('nvidia-smi'):
    smi = subprocess.run(['nvidia-smi', '--query-gpu=name,driver_version,memory.total',
                          '--format=csv,noheader'], capture_output=True, text=True, timeout=30,
                         check=False)
    out['nvidia_smi'] = smi.stdout.strip() or smi.stderr.strip()
  return out


def part_versions(args, sizes):
  found = {'python': sys.version.split()[0]}
  for name in PACKAGES:
    try:
      found[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return found


def part_tests(args, sizes, timeout):
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get('JAX_PLATFORMS', ''))
  report = os.path.join(args.out, 'accelerator_tests.xml')
  proc = subprocess.run(
      [sys.executable, '-m', 'pytest', '-q', '-rs', '-m', 'accelerator', '-p', 'no:cacheprovider',
       f'--junitxml={report}', os.path.join(ROOT, 'tests')], cwd=ROOT, env=env,
      capture_output=True, text=True, timeout=timeout, check=False)
  _log(args, 'tests', proc.stdout + proc.stderr)
  summary = [l for l in proc.stdout.splitlines() if ' passed' in l or ' failed' in l
             or ' skipped' in l or 'no tests ran' in l]
  return {'exit_code': proc.returncode, 'summary': summary[-1] if summary else proc.stdout[-300:],
          'skips': [l for l in proc.stdout.splitlines() if l.startswith('SKIPPED')]}


def _throughput_args(sizes, batch, dtype, peer_repo=None):
  return argparse.Namespace(model=sizes['model'], batch_size=batch, dtype=dtype,
                            steps=sizes['steps'], repeats=sizes['repeats'], warmup=sizes['warmup'],
                            peer_repo=peer_repo)


def part_throughput(args, sizes):
  import train_throughput  # pylint: disable=g-import-not-at-top
  import results  # pylint: disable=g-import-not-at-top
  runs = []
  for dtype in sizes['dtypes']:
    for batch in sizes['batches']:
      ours = train_throughput.bench_ours(_throughput_args(sizes, batch, dtype))
      run = {'model': sizes['model'], 'batch_size': batch, 'dtype': dtype,
             **{k: ours[k] for k in ('images_per_sec', 'step_time_s', 'mfu', 'tflops_per_sec',
                                     'compile_s', 'devices', 'device_kind')}}
      runs.append(run)
      print(json.dumps(run), flush=True)
      results.record(os.path.join(args.out, 'results.jsonl'), 'train_throughput', {
          'model': sizes['model'], 'batch_size': batch, 'dtype': dtype,
          'devices': ours['devices']}, {'images_per_sec': ours['images_per_sec'],
                                        'step_ms': ours['step_time_s'] * 1e3,
                                        'compile_s': ours['compile_s'], 'mfu': ours['mfu']})
  return runs


def part_peer(args, sizes):
  import train_throughput  # pylint: disable=g-import-not-at-top
  import results  # pylint: disable=g-import-not-at-top
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise Skip('PyTorch is not installed') from None
  repo = args.peer_repo if args.peer_repo and os.path.isdir(args.peer_repo) else None
  if repo is None and importlib.util.find_spec('vit_pytorch') is None:
    raise Skip('neither --peer_repo (a checkout of SHI-Labs/Compact-Transformers) nor vit-pytorch '
               'is here')
  runs = []
  for dtype in sizes['dtypes']:
    for batch in sizes['batches']:
      peer = train_throughput.bench_peer(_throughput_args(sizes, batch, dtype, repo),
                                         compiled=False)
      run = {'model': sizes['model'], 'batch_size': batch, 'dtype': dtype, **peer}
      runs.append(run)
      print(json.dumps(run), flush=True)
      results.record(os.path.join(args.out, 'results.jsonl'), 'train_throughput', {
          'model': sizes['model'], 'batch_size': batch, 'dtype': dtype, 'devices': 1,
          'peer': peer['model_code']}, {'peer_eager_images_per_sec': peer['images_per_sec']})
  return runs


def part_epoch(args, sizes):
  import numpy as np  # pylint: disable=g-import-not-at-top
  import results  # pylint: disable=g-import-not-at-top
  from compact_flax import data  # pylint: disable=g-import-not-at-top
  from compact_flax import input_pipeline  # pylint: disable=g-import-not-at-top
  from compact_flax import train  # pylint: disable=g-import-not-at-top
  from configs import cifar10_cct7  # pylint: disable=g-import-not-at-top
  config = cifar10_cct7.get_config()
  config.model = sizes['model']
  config.dataset = 'device_check_cifar'
  config.aug.on_device = True
  config.num_epochs, config.cooldown_epochs, config.warmup_epochs = 1, 0, 0
  config.batch_size = sizes['batches'][0]
  config.eval_batch_size = sizes['batches'][0]
  config.checkpoint_every_steps = 10**9
  rng = np.random.default_rng(0)
  n, m = sizes['epoch_images'], sizes['eval_images']
  pixels = rng.integers(0, 256, (n + m, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, n + m).astype(np.int32)
  data.SOURCES['device_check_cifar'] = lambda: input_pipeline.ArraySource(
      'device_check_cifar', config.aug, pixels[:n], labels[:n], pixels[n:], labels[n:],
      [str(i) for i in range(10)])
  with tempfile.TemporaryDirectory() as workdir:
    t0 = time.perf_counter()
    record = train.train_and_evaluate(config, workdir)
    wall = time.perf_counter() - t0
    with open(os.path.join(workdir, 'timing.json')) as f:
      phases = json.load(f)
  images = n // config.batch_size * config.batch_size
  out = {'model': config.model, 'dtype': config.dtype, 'batch_size': config.batch_size,
         'images': images, 'wall_s': wall, 'phases_s': phases,
         'images_per_sec_steps': images / max(phases['steps'] + phases['input'], 1e-9),
         'images_per_sec_wall': images / wall, 'eval_top1': record.get('eval_top1')}
  results.record(os.path.join(args.out, 'results.jsonl'), 'device_epoch', {
      'model': config.model, 'dtype': 'auto', 'batch_size': config.batch_size,
      'images': images}, {'wall_s': wall, 'steps_s': phases['steps'] + phases['input'],
                          'compile_s': phases['compile'],
                          'images_per_sec': out['images_per_sec_steps']})
  return out


def part_memory(args, sizes):
  import jax  # pylint: disable=g-import-not-at-top
  import compile_tpu  # pylint: disable=g-import-not-at-top
  import train_throughput  # pylint: disable=g-import-not-at-top
  before = _peak(jax)
  ours = train_throughput.bench_ours(argparse.Namespace(
      model=sizes['model'], batch_size=sizes['memory_batch'], dtype='bfloat16', steps=2,
      repeats=1, warmup=1), keep_compiled=True)
  predicted = compile_tpu.hbm_bytes(ours['compiled'])
  after = _peak(jax)
  return {'model': sizes['model'], 'batch_size': sizes['memory_batch'], 'dtype': 'bfloat16',
          'predicted_bytes': int(predicted), 'measured_peak_bytes': after,
          'peak_before_bytes': before,
          'measured_note': None if after is not None else
                           'this device reports no memory statistics (a CPU)'}


def _peak(jax):
  stats = jax.devices()[0].memory_stats() if hasattr(jax.devices()[0], 'memory_stats') else None
  return (stats or {}).get('peak_bytes_in_use')


class Skip(Exception):
  """A part that cannot run here, and why."""


def _log(args, part, text):
  with open(os.path.join(args.out, 'device_check.log'), 'a') as f:
    f.write(f'===== {part} =====\n{text}\n')


def run_part(args, part: str, timeout: float):
  """Runs one part in a child process with `timeout`; (result or None, why it is None)."""
  path = os.path.join(args.out, f'part_{part}.json')
  cmd = [sys.executable, os.path.abspath(__file__), '--out', args.out, '--part', part]
  cmd += ['--dry_run'] if args.dry_run else []
  cmd += ['--peer_repo', args.peer_repo] if args.peer_repo else []
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout, 1),
                          check=False, env=dict(os.environ, PYTHONUNBUFFERED='1'))
    _log(args, part, proc.stdout + proc.stderr)
  except subprocess.TimeoutExpired as e:
    _log(args, part, f'{(e.stdout or b"")!s}\n{(e.stderr or b"")!s}\nran past {timeout:.0f} s')
    return None, f'ran past its budget of {timeout:.0f} s'
  if os.path.exists(path):
    with open(path) as f:
      written = json.load(f)
    os.remove(path)
    return written.get('result'), written.get('skipped')
  tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ['no output']
  return None, f'failed (exit {proc.returncode}): {tail[0][:300]}'


def child(args):
  """`--part NAME`: runs that part here and writes DIR/part_NAME.json."""
  sizes = SIZES[args.dry_run]
  fn = globals()[f'part_{args.part}']
  try:
    if args.part == 'tests':
      result = fn(args, sizes, timeout=args.part_timeout)
    else:
      result = fn(args, sizes)
    written = {'result': result, 'skipped': None}
  except Skip as e:
    written = {'result': None, 'skipped': str(e)}
  with open(os.path.join(args.out, f'part_{args.part}.json'), 'w') as f:
    json.dump(written, f, default=str)


def write(args, report):
  tmp = os.path.join(args.out, 'device_check.json.tmp')
  with open(tmp, 'w') as f:
    json.dump(report, f, indent=1, default=str)
  os.replace(tmp, os.path.join(args.out, 'device_check.json'))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', required=True, help='folder for device_check.json and the log')
  parser.add_argument('--dry_run', action='store_true', help='every part at a tiny size')
  parser.add_argument('--budget_s', type=float, default=480.0,
                      help='seconds for the whole check; each part gets its share')
  parser.add_argument('--peer_repo', help='a checkout of SHI-Labs/Compact-Transformers')
  parser.add_argument('--part', choices=PARTS, help=argparse.SUPPRESS)
  parser.add_argument('--part_timeout', type=float, default=60.0, help=argparse.SUPPRESS)
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  if args.part:
    return child(args)
  t0 = time.perf_counter()
  report = {part: None for part in PARTS}
  report.update(skipped={}, dry_run=args.dry_run, budget_s=args.budget_s,
                started=time.strftime('%Y-%m-%d %H:%M:%S'))
  write(args, report)
  for part in PARTS:
    left = args.budget_s - (time.perf_counter() - t0)
    share = args.budget_s * SHARES[part]
    if left < min(share, 5):
      report['skipped'][part] = 'the budget ran out before it started'
      continue
    timeout = min(share, left)
    if part == 'tests':
      args.part_timeout = timeout - 5
    t = time.perf_counter()
    result, why = run_part(args, part, timeout)
    report[part] = result
    if why:
      report['skipped'][part] = why
    report.setdefault('seconds', {})[part] = round(time.perf_counter() - t, 1)
    print(f'{part}: {"done" if result is not None else why} '
          f'({report["seconds"][part]:.0f} s)', flush=True)
    write(args, report)  # what has finished is on disk, whatever happens next
  report['total_s'] = round(time.perf_counter() - t0, 1)
  write(args, report)
  print(f'Wrote {os.path.join(args.out, "device_check.json")} in {report["total_s"]:.0f} s.')
  return 0


if __name__ == '__main__':
  sys.exit(main())
