"""Writes docs/performance.md from the results files (benchmarks/results/*.jsonl).

  python benchmarks/render_performance.py            # rewrite the page
  python benchmarks/render_performance.py --check    # exit 1 if the page is not what the data gives

Runs of one setting on one machine form one row: the mean of each figure, with its range and the
number of runs where there are several (figures marked `latest` show the newest run's value).
Nothing here measures anything; every figure comes from a results line.
"""

import argparse
import collections
import glob
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import results  # pylint: disable=g-import-not-at-top,wrong-import-position

PAGE = os.path.join(results.ROOT, 'docs', 'performance.md')

# (key, column, format, aggregate): aggregate 'mean' shows mean, range and count; 'latest' the
# newest run's value (for figures that are a property of the program, not of the run).
Fig = collections.namedtuple('Fig', 'key column fmt agg', defaults=('mean',))

SECTIONS = [
    dict(
        name='main_command', title='The README\'s main command: digits on a CPU',
        intro='The first set-up command: CCT-2 on the bundled 8x8 digits, 30 epochs (660 steps), '
              'timed by `benchmarks/main_command.py` (or by hand). "training" is the loop\'s own '
              '"Done" time (compilation included), "whole process" from launch to exit.',
        setting=['config', 'install'],
        figures=[Fig('top1', 'held-out top-1', '{:.2%}'), Fig('train_s', 'training, s', '{:.1f}'),
                 Fig('process_s', 'whole process, s', '{:.1f}')]),
    dict(
        name='end_to_end', title='A whole run on an image folder, beside the official trainer',
        intro='`benchmarks/end_to_end.py`: the same folder, recipe, model, epochs and seed through '
              'our trainer and the official `train.py` (timm 0.4.12, PyTorch 2.14.1, float32 on '
              'the CPU), one after the other, wall clock from launch to exit. `digits_png` is '
              'scikit-learn\'s digits as 32x32 PNG folders (1,438 train, 359 eval: '
              '`--make_digits_folder DIR`), `digits_mixed` the same resized to random sizes of '
              '28-44 px (`--random_sizes 28 44`). Rows with a `stage` are earlier code, kept for '
              'the record; only rows of one machine compare.',
        setting=['folder', 'recipe', 'side', 'stage', 'compilation_cache'],
        figures=[Fig('wall_s', 'wall clock, s', '{:.1f}'), Fig('top1', 'top-1', '{:.1%}'),
                 Fig('input_wait_s', 'input waits, s', '{:.1f}')]),
    dict(
        name='train_throughput', title='The training step alone',
        intro='`benchmarks/train_throughput.py`: the trainer\'s jitted step on synthetic '
              'device-resident batches (median of repeats), beside a PyTorch model of the same '
              'architecture in the same run (`peer`: the official `src/` code or vit-pytorch\'s '
              'CCT, the authors\' port). `devices` is the XLA device count (a split CPU).',
        setting=['model', 'batch_size', 'dtype', 'devices', 'peer'],
        figures=[Fig('images_per_sec', 'ours, images/s', '{:.0f}'),
                 Fig('peer_eager_images_per_sec', 'PyTorch eager, images/s', '{:.0f}'),
                 Fig('peer_compiled_images_per_sec', 'torch.compile, images/s', '{:.0f}'),
                 Fig('mfu', 'MFU', '{:.1%}')]),
    dict(
        name='device_epoch', title='One CIFAR-10-sized epoch end to end on an accelerator',
        intro='`benchmarks/device_check.py`: 50,000 in-memory synthetic uint8 images through '
              '`train_and_evaluate` with the full recipe and the augmentation in the step; '
              '"steps" is the loop\'s time after the first (compiling) step.',
        setting=['model', 'dtype', 'batch_size', 'images'],
        figures=[Fig('wall_s', 'wall clock, s', '{:.1f}'), Fig('steps_s', 'steps, s', '{:.1f}'),
                 Fig('compile_s', 'compile, s', '{:.1f}'),
                 Fig('images_per_sec', 'images/s in the steps', '{:.0f}')]),
    dict(
        name='input_pipeline', title='The input pipeline, CIFAR-10 recipe',
        intro='`benchmarks/input_pipeline.py`: what the host sustains with every per-image op of '
              'the recipe on (crop, random interpolation, flip, RandAugment, erasing). On a CPU '
              'the "device" is the same cores.',
        setting=['data', 'batch_size', 'path'],
        figures=[Fig('images_per_sec', 'images/s', '{:.0f}'),
                 Fig('host_s_per_epoch', 'host s / 50,000-image epoch', '{:.2f}')]),
    dict(
        name='latency', title='Batch-1 inference latency on a CPU',
        intro='`benchmarks/latency.py`: one 32x32 image, random weights, after warm-up.',
        setting=['model', 'path', 'threads'],
        figures=[Fig('median_ms', 'median ms', '{:.1f}'), Fig('p10_ms', 'p10 ms', '{:.1f}'),
                 Fig('p90_ms', 'p90 ms', '{:.1f}')]),
    dict(
        name='compile_tpu', title='TPU slices, compiled without a TPU (ESTIMATES)',
        intro='`benchmarks/compile_tpu.py` compiles the trainer\'s own steps with XLA\'s TPU '
              'compiler on a CPU host and reads its cost and memory analysis. FLOPs, bytes and '
              'HBM are the compiler\'s; the milliseconds are a roofline ESTIMATE (the larger of '
              'FLOPs / peak and bytes / bandwidth), not a measurement on a TPU.',
        setting=['config', 'topology', 'overrides', 'stage'],
        figures=[Fig('tflop_per_chip', 'TFLOP / chip / step', '{:.3f}', 'latest'),
                 Fig('gb_per_chip', 'GB moved / chip / step', '{:.2f}', 'latest'),
                 Fig('hbm_gib_per_chip', 'HBM / chip, GiB', '{:.2f}', 'latest'),
                 Fig('est_ms_per_step', 'ESTIMATE ms / step', '{:.2f}', 'latest'),
                 Fig('compile_s', 'compile here, s', '{:.0f}')]),
    dict(
        name='compile_gpu', title='One H100, compiled without a GPU (ESTIMATES)',
        intro='The same tool with XLA\'s GPU compiler (`--topology=h100`): HBM from its memory '
              'analysis and a census of the kernels it chose, without autotuning. The '
              'milliseconds are a roofline ESTIMATE from the same step through the TPU cost '
              'model; no GPU ran it.',
        setting=['config', 'batch_size', 'dtype', 'overrides'],
        figures=[Fig('train_hbm_gib', 'train HBM, GiB', '{:.2f}', 'latest'),
                 Fig('train_kernels', 'train kernels', '{}', 'latest'),
                 Fig('eval_hbm_gib', 'eval HBM, GiB', '{:.2f}', 'latest'),
                 Fig('est_ms_per_step', 'ESTIMATE ms / step', '{:.1f}', 'latest')]),
    dict(
        name='largest_batch', title='The largest batch that fits one H100 (compiler memory analysis)',
        intro='`compile_tpu.py --topology=h100 --largest_batch`: XLA\'s memory analysis against '
              'the H100 80GB\'s bytes, bisected to within 5%; bfloat16.',
        setting=['config', 'topology', 'dtype'],
        figures=[Fig('recipe_batch', 'recipe batch', '{}', 'latest'),
                 Fig('recipe_batch_hbm_gib', 'HBM at it, GiB', '{:.2f}', 'latest'),
                 Fig('largest_batch', 'largest that fits', '{:,}', 'latest'),
                 Fig('largest_batch_hbm_gib', 'HBM at it, GiB', '{:.2f}', 'latest'),
                 Fig('smallest_failing_batch', 'smallest that does not', '{:,}', 'latest')]),
    dict(
        name='preemption_trials', title='Pre-emption at random moments, two processes',
        intro='`benchmarks/preemption_trials.py`: two-process runs of the digits config with '
              'SIGTERM to one process after a random delay. Sound: both exit 0 and the newest '
              'checkpoint is of the step where the run stopped or ended.',
        setting=['processes', 'delay_s'],
        figures=[Fig('trials', 'trials', '{:.0f}'), Fig('sound', 'sound', '{:.0f}'),
                 Fig('stopped_before_the_first_step', 'stopped before the first step', '{:.0f}'),
                 Fig('stopped_during_training', 'stopped during training', '{:.0f}'),
                 Fig('ran_to_the_end', 'signal after the last step', '{:.0f}')]),
]

HEADER = """# Performance: the figures measured

What this page is for: how fast and how accurate the project is on the machines it was measured on,
and the command that measures it on yours. It is generated from the results files
(`benchmarks/results/*.jsonl`, one JSON line per run: command, commit, machine, date, seed, figures)
by `python benchmarks/render_performance.py`; do not edit it by hand. Each benchmark script appends
its line when it runs. Where several runs share a setting and a machine, a cell shows their mean,
then the range and the number of runs. Compare rows only within one machine. How the figures were
reached, what moved them and what was tried: [notes.md](notes.md).

No GPU or TPU has run these benchmarks yet: the TPU and H100 sections come from XLA's compilers
run on a CPU, and their speeds are labelled ESTIMATE.
"""


def _cell(fig: Fig, runs):
  values = [(r['date'], r['figures'][fig.key]) for r in runs
            if r['figures'].get(fig.key) is not None]
  if not values:
    return ''
  if fig.agg == 'latest' or not isinstance(values[-1][1], (int, float)):
    return fig.fmt.format(max(values, key=lambda v: v[0])[1])
  numbers = [v for _, v in values]
  mean = fig.fmt.format(statistics.fmean(numbers))
  if len(numbers) == 1:
    return mean
  return f'{mean} ({fig.fmt.format(min(numbers))}-{fig.fmt.format(max(numbers))}, {len(numbers)})'


def _normalised(command: str) -> str:
  """One line per command shape: seeds and per-seed file names as placeholders."""
  command = re.sub(r'--seed[ =]\d+', '--seed N', command)
  return re.sub(r'init_s\d+', 'init_sN', command)


def _dates(runs) -> str:
  dates = sorted({r['date'] for r in runs})
  return dates[0] if len(dates) == 1 else f'{dates[0]} to {dates[-1]}'


def section(spec, lines):
  out = [f'## {spec["title"]}', '', spec['intro'], '']
  by_machine = collections.defaultdict(list)
  for line in lines:
    by_machine[line['machine']].append(line)
  for machine in sorted(by_machine):
    groups = collections.OrderedDict()
    for line in by_machine[machine]:
      key = tuple(str(line['setting'].get(k, '')) for k in spec['setting'])
      groups.setdefault(key, []).append(line)
    shown = [k for i, k in enumerate(spec['setting']) if any(g[i] for g in groups)]
    figures = [f for f in spec['figures']
               if any(f.key in r['figures'] for runs in groups.values() for r in runs)]
    out += [f'On {machine}:', '']
    out.append('| ' + ' | '.join(shown + [f.column for f in figures] + ['runs', 'dates']) + ' |')
    out.append('|' + ' --- |' * (len(shown) + len(figures) + 2))
    for key, runs in groups.items():
      cells = [key[spec['setting'].index(k)].replace('|', '\\|') for k in shown]
      cells += [_cell(f, runs).replace('|', '\\|') for f in figures]
      out.append('| ' + ' | '.join(cells + [str(len(runs)), _dates(runs)]) + ' |')
    commands = sorted({_normalised(r['command']) for r in by_machine[machine]})
    notes = sorted({r['note'] for r in by_machine[machine] if r.get('note')})
    out += ['', 'Commands:', ''] + [f'- `{c}`' for c in commands]
    if notes:
      out += ['', 'Notes on these runs: ' + '; '.join(notes) + '.']
    out.append('')
  return out


def render(results_dir: str = results.RESULTS_DIR) -> str:
  lines = collections.defaultdict(list)
  for path in sorted(glob.glob(os.path.join(results_dir, '*.jsonl'))):
    for line in results.load(path):
      lines[line['benchmark']].append(line)
  known = {s['name'] for s in SECTIONS}
  unknown = sorted(set(lines) - known)
  if unknown:
    raise SystemExit(f'No section of render_performance.SECTIONS shows the benchmark(s) {unknown}: '
                     'add one.')
  out = [HEADER]
  for spec in SECTIONS:
    if lines.get(spec['name']):
      out += section(spec, lines[spec['name']])
  return '\n'.join(out).rstrip() + '\n'


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--check', action='store_true',
                      help='compare with the committed page instead of writing it')
  parser.add_argument('--output', default=PAGE)
  args = parser.parse_args()
  page = render()
  if args.check:
    with open(args.output) as f:
      if f.read() != page:
        print(f'{args.output} is not what the results files give: run '
              'python benchmarks/render_performance.py', file=sys.stderr)
        return 1
    print(f'{args.output} matches the results files.')
    return 0
  tmp = args.output + '.tmp'
  with open(tmp, 'w') as f:
    f.write(page)
  os.replace(tmp, args.output)
  print(f'Wrote {args.output}.')
  return 0


if __name__ == '__main__':
  sys.exit(main())
