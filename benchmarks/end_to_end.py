"""A whole training run on an image folder, on the clock: wall time, images/s end to end, top-1.

  python benchmarks/end_to_end.py --make_digits_folder /tmp/digits_png     # real data, no download
  python benchmarks/end_to_end.py --make_digits_folder /tmp/digits_mixed --random_sizes 28 44
  python benchmarks/end_to_end.py --folder /tmp/digits_png --config configs/cifar10_cct7.py \
      --model cct_2_3x2_32 --epochs 60 --cooldown 5 --seed 0 [--peer --peer_repo DIR]

`--make_digits_folder` writes scikit-learn's digits (the project's split: 1,438 train, 359 eval)
upsampled to 32x32 RGB PNGs in DIR/train/<class>/ and DIR/val/<class>/.

Ours: `train_main.py --config=CONFIG --config.dataset=folder:DIR` with the config's recipe, the
model, epochs, cooldown and seed given here, and otherwise the project's defaults, as a subprocess
(start-up and compilation included in the wall clock). The trainer keeps compiled programs in a
cache between runs (`--compilation_cache`), so a second run of the same shapes, e.g. another
seed, skips most compilation; `--cold_cache` gives it an empty cache, as on a first run.

`--peer`: the official trainer on the same folder and recipe: the official repository's
`train.py` (timm 0.4.12's, with the official model code; `--peer_repo` is a checkout of
SHI-Labs/Compact-Transformers, `--peer_python` a Python with timm==0.4.12 and PyTorch), with the
official CIFAR-10 yml and the same model, epochs, cooldown and seed. On a machine without CUDA it
needs small outside patches, applied by a wrapper (nothing in the checkout changes): `.cuda()` on
modules and tensors is the identity, `torch.cuda.synchronize` a no-op, timm's Mixup builds its
targets on the CPU, and RandAugment's Posterize at 0 bits gives a black image as the Pillow of 2021
did (current Pillow refuses 0 bits). AMP turns itself off without CUDA, so it trains in float32,
as ours does here. Neither is a dependency of this project. With RandAugment off (`--aa=` and
`--config.aug.auto_augment=`) both sides jitter colour instead (timm's `--color-jitter`, here
`aug.color_jitter`, 0.4 on both).

The last line printed is one JSON object per side.
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
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import results  # pylint: disable=g-import-not-at-top,wrong-import-position

# The unaugmented comparison's overrides, on each side: no RandAugment, Mixup or CutMix (both
# sides then jitter colour, timm's default).
UNAUGMENTED = (['--config.aug.auto_augment=', '--config.aug.mixup=0', '--config.aug.cutmix=0'],
               ['--aa=', '--mixup=0', '--cutmix=0'])

_PEER_SHIM = r'''
import runpy, sys, torch
torch.Tensor.cuda = lambda self, *a, **k: self
torch.nn.Module.cuda = lambda self, *a, **k: self
torch.cuda.synchronize = lambda *a, **k: None
import timm.data.mixup as mixup
_target = mixup.mixup_target
mixup.mixup_target = lambda *a, **k: _target(*a, **{**k, 'device': 'cpu'})
import timm.data.auto_augment as aa
from PIL import Image
_posterize = aa.posterize
aa.posterize = lambda img, bits, **k: (Image.new(img.mode, img.size) if int(bits) <= 0
                                       else _posterize(img, bits, **k))
aa.NAME_TO_OP['Posterize'] = aa.NAME_TO_OP['PosterizeIncreasing'] = aa.posterize
aa.NAME_TO_OP['PosterizeOriginal'] = aa.posterize
sys.argv = sys.argv[1:]
sys.path.insert(0, '.')  # the checkout, for `from src import *`
runpy.run_path(sys.argv[0], run_name='__main__')
'''


def make_digits_folder(root: str):
  """The project's digits split as 32x32 RGB PNG folders (bicubic upsampling of the 8x8 images)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from compact_flax import data  # pylint: disable=g-import-not-at-top
  source = data.digits()
  mean, std = source.normalization['mean'][0], source.normalization['std'][0]
  for split, images, labels in (('train', source.train_inputs['image'], source.train_labels),
                                ('val', source.eval_inputs['image'], source.eval_labels)):
    for i, (img, label) in enumerate(zip(images, labels)):
      folder = os.path.join(root, split, str(label))
      os.makedirs(folder, exist_ok=True)
      pixels = np.clip((img[..., 0] * std + mean) * 255, 0, 255).round().astype(np.uint8)
      Image.fromarray(pixels).resize((32, 32), Image.BICUBIC).convert('RGB').save(
          os.path.join(folder, f'{i:05d}.png'))
  return len(source.train_labels), len(source.eval_labels)


def resize_at_random(root: str, low: int, high: int):
  """Resizes every image of the folder (PIL bicubic) to a height and a width drawn from
  [low, high], seeded: a folder of images of several sizes, as real folders are."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for split in ('train', 'val'):
    for cls in sorted(os.listdir(os.path.join(root, split))):
      for name in sorted(os.listdir(os.path.join(root, split, cls))):
        path = os.path.join(root, split, cls, name)
        h, w = rng.integers(low, high + 1, 2)
        with Image.open(path) as img:
          resized = img.convert('RGB').resize((int(w), int(h)), Image.BICUBIC)
        resized.save(path)


def _count(folder: str) -> int:
  return sum(len(files) for _, _, files in os.walk(folder))


def run_ours(args) -> dict:
  workdir = tempfile.mkdtemp(prefix='e2e_ours_')
  cmd = [sys.executable, os.path.join(ROOT, 'train_main.py'), f'--config={args.config}',
         f'--workdir={workdir}', f'--config.dataset=folder:{args.folder}',
         f'--config.model={args.model}', f'--config.num_epochs={args.epochs}',
         f'--config.cooldown_epochs={args.cooldown}', f'--config.seed={args.seed}',
         *args.override]
  if args.cold_cache:  # an empty compilation cache: everything compiles, as in a first run
    cmd.append(f'--compilation_cache={tempfile.mkdtemp(prefix="e2e_xla_")}')
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  wall = time.perf_counter() - t0
  if proc.returncode:
    raise SystemExit(f'ours failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}')
  rows = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  with open(os.path.join(workdir, 'timing.json')) as f:
    phases = json.load(f)
  # Before the trainer's clock starts: Python, JAX and TensorFlow imports, flag parsing.
  phases['imports'] = round(wall - phases['total'], 2)
  return {'side': 'ours', 'wall_s': round(wall, 1), 'top1': rows[-1]['eval_top1'],
          'epochs': args.epochs + args.cooldown, 'phases_s': phases, 'workdir': workdir,
          'compilation_cache': 'cold' if args.cold_cache else 'the trainer\'s default'}


def run_peer(args) -> dict:
  if not args.peer_repo or not os.path.isfile(os.path.join(args.peer_repo, 'train.py')):
    raise SystemExit('--peer needs --peer_repo: a checkout of SHI-Labs/Compact-Transformers.')
  out = tempfile.mkdtemp(prefix='e2e_peer_')
  shim = os.path.join(out, 'cpu_shim.py')
  with open(shim, 'w') as f:
    f.write(_PEER_SHIM)
  cmd = [args.peer_python, shim, 'train.py', args.folder, '-c',
         'configs/pretrained/cct_7-3x1_cifar10_300epochs.yml', '--model', args.model,
         '--epochs', str(args.epochs), '--cooldown-epochs', str(args.cooldown),
         '--seed', str(args.seed), '--train-split', 'train', '--val-split', 'val',
         '--no-prefetcher', '--output', out, *args.peer_override]
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, cwd=args.peer_repo, capture_output=True, text=True, check=False)
  wall = time.perf_counter() - t0
  log = proc.stdout + proc.stderr
  if proc.returncode:
    raise SystemExit(f'the official trainer failed:\n{log[-4000:]}')
  top1 = re.findall(r'Acc@1:\s+[\d.]+\s+\(\s*([\d.]+)\)', log)
  return {'side': 'official', 'wall_s': round(wall, 1),
          'top1': float(top1[-1]) / 100 if top1 else None,
          'epochs': args.epochs + args.cooldown, 'output': out}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--make_digits_folder', help='write the digits PNG folders here and exit')
  parser.add_argument('--random_sizes', type=int, nargs=2, metavar=('MIN', 'MAX'),
                      help='with --make_digits_folder: each image resized to a random height and '
                      'width in [MIN, MAX] px')
  parser.add_argument('--folder', help='image folder: train/<class>/* and val/<class>/*')
  parser.add_argument('--config', default=os.path.join(ROOT, 'configs', 'cifar10_cct7.py'))
  parser.add_argument('--model', default='cct_2_3x2_32')
  parser.add_argument('--epochs', type=int, default=60)
  parser.add_argument('--cooldown', type=int, default=5)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--override', action='append', default=[],
                      help='extra --config.x=y for ours (repeatable)')
  parser.add_argument('--cold_cache', action='store_true',
                      help='ours starts with an empty compilation cache (as a first run does)')
  parser.add_argument('--skip_ours', action='store_true')
  parser.add_argument('--peer', action='store_true', help='also run the official trainer')
  parser.add_argument('--peer_repo', help='checkout of SHI-Labs/Compact-Transformers')
  parser.add_argument('--peer_python', default=sys.executable)
  parser.add_argument('--peer_override', action='append', default=[],
                      help='extra train.py arguments for the official side (repeatable)')
  parser.add_argument('--results', default=results.default_path('end_to_end'), help=results.HELP)
  args = parser.parse_args(argv)
  if args.make_digits_folder:
    n_train, n_eval = make_digits_folder(args.make_digits_folder)
    if args.random_sizes:
      resize_at_random(args.make_digits_folder, *args.random_sizes)
    print(f'Wrote {n_train} train and {n_eval} eval PNGs under {args.make_digits_folder}.')
    return 0
  if not args.folder:
    parser.error('--folder (or --make_digits_folder) is required')
  n_train = _count(os.path.join(args.folder, 'train'))
  runs = []
  if not args.skip_ours:
    runs.append(run_ours(args))
  if args.peer:
    runs.append(run_peer(args))
  for r in runs:
    r.update(model=args.model, seed=args.seed, train_images=n_train,
             images_per_sec=round(n_train * r['epochs'] / r['wall_s'], 1))
    print(json.dumps(r))
    results.record(args.results, 'end_to_end', {
        'folder': os.path.basename(os.path.normpath(args.folder)), 'recipe': recipe_label(args),
        'model': args.model, 'epochs': f'{args.epochs} + {args.cooldown}',
        'side': 'compact-flax' if r['side'] == 'ours' else 'official train.py',
        **({'compilation_cache': 'warm'} if r['side'] == 'ours' and not args.cold_cache else {})},
        {'wall_s': r['wall_s'], 'top1': r['top1'],
         **({'input_wait_s': r['phases_s'].get('input')} if 'phases_s' in r else {})},
        seed=args.seed)
  return 0


def recipe_label(args) -> str:
  """How the run's recipe differs from the config's, in words (the rows of docs/performance.md)."""
  ours, peer = args.override, args.peer_override if args.peer else []
  if not ours and not peer:
    return 'CIFAR-10 recipe'
  if ours == UNAUGMENTED[0] and peer == (UNAUGMENTED[1] if args.peer else []):
    return 'no RandAugment/Mixup/CutMix; colour jitter on both sides'
  return 'CIFAR-10 recipe with ' + ' '.join(ours + peer)


if __name__ == '__main__':
  sys.exit(main())
