"""Training throughput of the full jitted step, optionally beside the PyTorch CCT in the same run.

  python benchmarks/train_throughput.py --model cct_2_3x2_32 --batch_size 128 --peer
  python benchmarks/train_throughput.py --model cct_7_3x1_32 --batch_size 1024 --dtype bfloat16 --peer

Ours: the train step `train_and_evaluate` runs (`steps.make_train_step`: forward, backward, AdamW
with timm's decay mask, label smoothing 0.1; mixup off, as the peer has none), jitted over a mesh
of every device JAX sees, on synthetic device-resident data, timed after compilation and
warm-up. The peer (`--peer`): the official model code (`--peer_repo`, a checkout of
SHI-Labs/Compact-Transformers) or the CCT of the `vit-pytorch` package (the authors' port,
loaded from its `cct.py` by path), with the same architecture, batch, optimizer and loss; on a GPU
with AMP when --dtype is bfloat16 or float16 (with its GradScaler); eager and `torch.compile`d.
No TensorFlow is imported. The last line printed is one JSON object.

On a CPU host, ours runs as `train_main.py --cpu_devices=-1` does: data parallelism over XLA
CPU devices of 8 images each (`devices.cpu_device_count`; 16 at batch 128). `--cpu_devices 0` keeps
JAX's single CPU device. The peer uses PyTorch's default threads. Accelerators are unaffected.
"""

import argparse
import importlib.util
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np

import compact_flax  # pylint: disable=g-import-not-at-top
import results
from compact_flax import devices
from compact_flax import merge
from compact_flax import optim
from compact_flax import precision
from compact_flax import steps
from configs import common

# Dense peak FLOP/s per chip for the MFU figure: (bfloat16, float32 via TF32 / default precision).
PEAKS = {'H100': (989e12, 495e12), 'H200': (989e12, 495e12), 'A100': (312e12, 156e12),
         'TPU v4': (275e12, 275e12), 'TPU v5 lite': (197e12, 197e12), 'TPU v5p': (459e12, 459e12),
         'TPU v6 lite': (918e12, 918e12)}


def peak_flops(device, dtype):
  for name, (bf16, f32) in PEAKS.items():
    if name.lower() in device.device_kind.lower():
      return bf16 if dtype in ('bfloat16', 'float16') else f32
  return None


def bench_ours(args, keep_compiled: bool = False):
  config = common.get_config()
  config.model = args.model
  config.dtype = args.dtype
  config.batch_size = args.batch_size
  config.aug.mixup = config.aug.cutmix = 0.0
  model = compact_flax.create_model(args.model, dtype=precision.DTYPES[args.dtype])
  h, w, c = merge.image_shape(model)
  mesh = devices.make_mesh()
  tx = optim.create_optimizer(config, optim.create_learning_rate_schedule(config, 100))
  state = steps.init_state(config, model, tx, mesh)
  step = steps.make_train_step(config, model, tx, mesh, steps_per_epoch=100)
  make = jax.jit(lambda k: {'image': jax.random.normal(k, (args.batch_size, h, w, c)),
                            'label': jax.random.randint(k, (args.batch_size,), 0,
                                                        model.num_classes)},
                 out_shardings=devices.batch_sharded(mesh))
  batches = [make(jax.random.key(i)) for i in range(2)]  # rotate: no cache-resident input
  rng = jax.random.key(0)
  t0 = time.perf_counter()
  compiled = step.lower(state, batches[0], rng).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  # The compiled SPMD program is per device: its FLOPs are one device's share of the step.
  flops_step = float(cost.get('flops', 0.0)) * mesh.size if cost else 0.0
  for i in range(args.warmup):
    state, metrics = compiled(state, batches[i % 2], rng)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    for i in range(args.steps):
      state, metrics = compiled(state, batches[i % 2], rng)
    jax.block_until_ready(metrics)
    times.append((time.perf_counter() - t0) / args.steps)
  step_s = float(np.median(times))
  device = mesh.devices.flat[0]
  peak = peak_flops(device, args.dtype)
  tflops = flops_step / step_s / 1e12
  return {
      'images_per_sec': args.batch_size / step_s, 'step_time_s': step_s,
      'step_time_spread_s': [float(min(times)), float(max(times))],
      'flops_per_image': flops_step / args.batch_size, 'tflops_per_sec': tflops,
      'mfu': tflops * 1e12 / (peak * mesh.size) if peak else None,
      'compile_s': compile_s, 'devices': mesh.size, 'device_kind': device.device_kind,
      'loss': float(metrics['loss']), **({'compiled': compiled} if keep_compiled else {}),
  }


def load_peer_cct():
  spec = importlib.util.find_spec('vit_pytorch')
  if spec is None:
    raise SystemExit('--peer needs vit-pytorch: pip install --no-deps vit-pytorch einops '
                     '(its __init__ wants torchvision; only cct.py is loaded, by path).')
  path = os.path.join(spec.submodule_search_locations[0], 'cct.py')
  module_spec = importlib.util.spec_from_file_location('vit_pytorch_cct', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def load_official_model(repo: str, name: str):
  """The official repository's own model (`src/`, a checkout of SHI-Labs/Compact-Transformers),
  built by its registered factory."""
  if not os.path.isfile(os.path.join(repo, 'src', 'cct.py')):
    raise SystemExit(f'--peer_repo {repo} is not a checkout of SHI-Labs/Compact-Transformers '
                     '(no src/cct.py).')
  sys.path.insert(0, os.path.abspath(repo))
  import src  # pylint: disable=g-import-not-at-top
  return getattr(src, name)()


def peer_model(args):
  """The PyTorch model timed beside ours: the official code (`--peer_repo`) or vit-pytorch's
  CCT (the authors' port), with the same architecture."""
  if getattr(args, 'peer_repo', None):
    return load_official_model(args.peer_repo, args.model), 'official src/'
  cct = load_peer_cct()
  _, kw = compact_flax.models.model_kwargs(args.model)
  if _ != 'cct':
    raise SystemExit('--peer compares CCT variants only.')
  return cct.CCT(img_size=kw['img_size'], embedding_dim=kw['embedding_dim'],
                 n_conv_layers=kw['n_conv_layers'], kernel_size=kw['kernel_size'],
                 stride=kw['stride'], padding=kw['padding'], num_layers=kw['num_layers'],
                 num_heads=kw['num_heads'], mlp_ratio=kw['mlp_ratio'],
                 num_classes=kw['num_classes'],
                 positional_embedding=kw['positional_embedding']), 'vit-pytorch CCT'


def bench_peer(args, compiled: bool):
  import torch  # pylint: disable=g-import-not-at-top
  _, kw = compact_flax.models.model_kwargs(args.model)
  cuda = torch.cuda.is_available()
  dev = torch.device('cuda' if cuda else 'cpu')
  model, which = peer_model(args)
  model = model.to(dev).train()
  n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
  opt = torch.optim.AdamW(model.parameters(), lr=5.5e-4, weight_decay=0.06)
  loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
  fwd = torch.compile(model) if compiled else model
  amp = cuda and args.dtype in ('bfloat16', 'float16')
  amp_dtype = torch.float16 if args.dtype == 'float16' else torch.bfloat16
  scaler = torch.amp.GradScaler('cuda', enabled=amp and args.dtype == 'float16')
  x = [torch.randn(args.batch_size, 3, kw['img_size'], kw['img_size'], device=dev)
       for _ in range(2)]
  y = torch.randint(0, kw['num_classes'], (args.batch_size,), device=dev)

  def step(i):
    with torch.autocast('cuda', dtype=amp_dtype, enabled=amp):
      loss = loss_fn(fwd(x[i % 2]), y)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return loss

  sync = torch.cuda.synchronize if cuda else (lambda: None)
  t0 = time.perf_counter()
  for i in range(args.warmup):
    step(i)
  sync()
  warm_s = time.perf_counter() - t0
  times = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    for i in range(args.steps):
      loss = step(i)
    sync()
    times.append((time.perf_counter() - t0) / args.steps)
  step_s = float(np.median(times))
  return {'images_per_sec': args.batch_size / step_s, 'step_time_s': step_s,
          'step_time_spread_s': [float(min(times)), float(max(times))], 'warmup_s': warm_s,
          'params': n_params, 'amp': amp and args.dtype, 'model_code': which,
          'torch': torch.__version__,
          'threads': torch.get_num_threads(), 'loss': float(loss)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='cct_2_3x2_32')
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16', 'float16'])
  parser.add_argument('--steps', type=int, default=20, help='timed steps per repeat')
  parser.add_argument('--repeats', type=int, default=3, help='the median repeat is reported')
  parser.add_argument('--warmup', type=int, default=5)
  parser.add_argument('--peer', action='store_true', help='also time the PyTorch model')
  parser.add_argument('--peer_modes', default='eager,compiled')
  parser.add_argument('--peer_repo', help='a checkout of SHI-Labs/Compact-Transformers: time its '
                      'own src/ model instead of vit-pytorch\'s CCT')
  parser.add_argument('--cpu_devices', type=int, default=-1,
                      help='XLA devices on a CPU host, as train_main.py --cpu_devices: -1 one per '
                      '8 images (devices.cpu_device_count), 0 JAX\'s default (one device)')
  parser.add_argument('--results', default=results.default_path('train_throughput'),
                      help=results.HELP)
  args = parser.parse_args()
  devices.set_cpu_devices(args.cpu_devices, args.batch_size)
  result = {'model': args.model, 'batch_size': args.batch_size, 'dtype': args.dtype,
            'jax': jax.__version__, 'python': platform.python_version(),
            'date': time.strftime('%Y-%m-%d')}
  ours = bench_ours(args)
  print(f'compact-flax: {ours["images_per_sec"]:.1f} img/s, {ours["step_time_s"] * 1e3:.2f} '
        f'ms/step, {ours["tflops_per_sec"]:.3f} TFLOP/s on {ours["devices"]} x '
        f'{ours["device_kind"]}' + (f', MFU {ours["mfu"]:.1%}' if ours['mfu'] else ''),
        flush=True)
  result.update(ours)
  if args.peer:
    for mode in args.peer_modes.split(','):
      peer = bench_peer(args, compiled=(mode == 'compiled'))
      result[f'peer_{mode}'] = peer
      result[f'ratio_vs_peer_{mode}'] = ours['images_per_sec'] / peer['images_per_sec']
      print(f'{peer["model_code"]} ({mode}): {peer["images_per_sec"]:.1f} img/s; compact-flax is '
            f'{result[f"ratio_vs_peer_{mode}"]:.2f}x', flush=True)
  print(json.dumps(result))
  figures = {'images_per_sec': ours['images_per_sec'], 'step_ms': ours['step_time_s'] * 1e3,
             'compile_s': ours['compile_s'], 'mfu': ours['mfu']}
  for mode in (args.peer_modes.split(',') if args.peer else []):
    figures[f'peer_{mode}_images_per_sec'] = result[f'peer_{mode}']['images_per_sec']
  setting = {'model': args.model, 'batch_size': args.batch_size, 'dtype': args.dtype,
             'devices': ours['devices']}
  if args.peer:
    setting['peer'] = result[f'peer_{args.peer_modes.split(",")[0]}']['model_code']
  results.record(args.results, 'train_throughput', setting, figures)


if __name__ == '__main__':
  main()
