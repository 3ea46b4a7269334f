"""Compiles the real train and eval steps for a TPU slice or a GPU, without either, and estimates
their speed.

  pip install -e ".[tpu]"        # libtpu: XLA's TPU compiler, runs on any Linux host
  python benchmarks/compile_tpu.py --config=configs/cifar10_cct7.py --topology=v5e:2x2
  python benchmarks/compile_tpu.py --config=configs/imagenet_cct14.py --topology=v5p:2x2x4 \
      --config.aug.on_device=False
  # GPUs: pip install "jax[cuda12]==<jax version>"; no GPU needed (JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1)
  python benchmarks/compile_tpu.py --config=configs/cifar10_cct7.py --topology=h100 \
      --config.batch_size=1024

The steps are the ones `train_and_evaluate` runs: `steps.make_train_step` / `make_eval_step` with
the config's model, optimizer, schedule and on-device recipe, jitted over a Mesh of the
topology's devices with the trainer's shardings, traced with the TPU kernels
(`kernels.target('tpu')`). XLA's TPU cost model then gives FLOPs and bytes per chip; the speed is
a roofline ESTIMATE from the published per-chip peaks below, not a measurement. The last line
printed is one JSON object.

A GPU target (`h100`, `a100_80`, `a100_40`; one GPU, the config's whole batch) compiles with XLA's
GPU compiler for the device described in `benchmarks/gpu_specs/` (the figures and their sources
are in those files) and reports its memory and a census of the kernels XLA chose (cuDNN, cuBLAS,
Triton, its own fusions). XLA gives no cost analysis for GPUs, so the FLOPs and bytes of the
estimate come from the same step (GPU kernels) compiled for one TPU v5e chip.
"""

import functools
import json
import os
import re
import sys
import time
from typing import Dict, List, Tuple
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags
from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental import topologies
from ml_collections import config_flags

from compact_flax import augment
from compact_flax import data
from compact_flax import devices
from compact_flax import input_pipeline
from compact_flax import kernels
from compact_flax import models
from compact_flax import optim
from compact_flax import steps
from compact_flax import train
from compact_flax import validation
import results  # pylint: disable=g-bad-import-order

# Published per-chip figures (Google Cloud TPU system-architecture pages): dense bfloat16 FLOP/s,
# HBM bandwidth (bytes/s), HBM capacity (bytes).
CHIPS = {
    'v4': (275e12, 1228e9, 32 << 30),
    'v5e': (197e12, 819e9, 16 << 30),
    'v5p': (459e12, 2765e9, 95 << 30),
    'v6e': (918e12, 1640e9, 32 << 30),
}

# Published per-GPU figures (NVIDIA datasheets): dense bfloat16 tensor FLOP/s, HBM bandwidth
# (bytes/s), memory as the device reports it (bytes, the target config's device_memory_size);
# the target config each compiles for.
GPUS = {
    'h100': (989.4e12, 3.35e12, 84942979072, 'h100_sxm.txtpb'),
    'a100_80': (312e12, 2.039e12, 85198045184, 'a100_sxm_80.txtpb'),
    'a100_40': (312e12, 1.555e12, 42298834944, 'a100_sxm_40.txtpb'),
}
# Where a GPU step's FLOPs and bytes are counted: one v5e chip, or, for a step that needs more
# than its 16 GiB, one v5p chip (95 GiB).
COST_MODEL_CHIPS = ('v5e:1x1', 'v5p:1x1x1')
GPU_SPECS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'gpu_specs')

config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).', lock_config=True)
flags.DEFINE_string('topology', 'v5e:2x2', 'TPU slice, e.g. v4:2x2x2, v5e:2x2, v5p:2x2x4, v6e:4x4; '
                    f'or a GPU: {", ".join(GPUS)}.')
flags.DEFINE_integer('top', 12, 'How many of the heaviest HLO ops to list.')
flags.DEFINE_bool('fused_attention', True, "GPU: cuDNN's fused attention where it serves (eval); "
                  'False keeps the explicit softmax, to compare.')
flags.DEFINE_bool('largest_batch', False, 'Search the largest train batch that fits the device '
                  "(by XLA's memory analysis) instead.")
flags.DEFINE_integer('max_compiles', 8, 'With --largest_batch: how many batch sizes to compile.')
flags.DEFINE_integer('upper_batch', 0, 'With --largest_batch: the second batch to compile (default '
                     'twice the config\'s); a batch known not to fit narrows a search resumed '
                     'from --config.batch_size.')
flags.DEFINE_string('results', None, 'Append the run\'s JSON line to this file (\'\': none; '
                    'default benchmarks/results/compile_tpu.jsonl, compile_gpu.jsonl or '
                    'largest_batch.jsonl by what ran).')
flags.DEFINE_string('dump_hlo', '', 'Write the optimized HLO of the train step to this file.')
FLAGS = flags.FLAGS

_DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 'f16': 2, 'bf16': 2, 's32': 4,
                'u32': 4, 'f32': 4, 's64': 8, 'u64': 8, 'f64': 8, 'c64': 8}
_SHAPE = re.compile(r'\b(pred|[suf]\d+|bf16|c64)\[([\d,]*)\]')


def chip_figures(topology: str) -> Tuple[float, float, int]:
  if topology in GPUS:
    return GPUS[topology][:3]
  generation = topology.split(':')[0].lower()
  for name, figures in CHIPS.items():
    if generation.startswith(name):
      return figures
  raise SystemExit(f'No published figures for {topology!r}; known: {sorted(CHIPS)}.')


_BOOKKEEPING = ('parameter', 'constant', 'tuple', 'get-tuple-element', 'bitcast', 'copy-start',
                'copy-done', 'slice-start', 'slice-done', 'after-all', 'partition-id')
_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%(\S+) = (.*?) ([a-z-]+)\((.*?)\)(?:, |$)')


def _shape_bytes(text: str) -> int:
  total = 0
  for dtype, dims in _SHAPE.findall(text):
    size = 1
    for d in filter(None, dims.split(',')):
      size *= int(d)
    total += size * _DTYPE_BYTES.get(dtype, 4)
  return total


def heaviest_ops(hlo_text: str, top: int) -> List[Dict[str, object]]:
  """The entry computation's ops by bytes touched (operands + result), with the JAX op they came
  from: where the memory traffic goes. Bookkeeping (tuples, async copies, bitcasts) is left out."""
  entry = hlo_text[hlo_text.index('\nENTRY'):] if '\nENTRY' in hlo_text else ''
  sizes, out = {}, []
  for line in entry.splitlines()[1:]:
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    name, shape, op, operands = m.groups()
    sizes[name] = _shape_bytes(shape)
    if op in _BOOKKEEPING:
      continue
    touched = sizes[name] + sum(sizes.get(o.strip().lstrip('%'), 0)
                                for o in operands.split(',') if o.strip().startswith('%'))
    source = re.search(r'op_name="([^"]*)"', line)
    out.append({'op': f'{op} {name}', 'bytes': touched,
                'from': source.group(1).replace('jit(train_step)/', '')[-100:] if source else ''})
  return sorted(out, key=lambda r: -r['bytes'])[:top]


def abstract_inputs(config, model, tx, mesh):
  """Shapes and shardings of what `train_step` and `eval_step` take: no arrays are made."""
  h, w = (model.img_size,) * 2 if isinstance(model.img_size, int) else tuple(model.img_size)
  c = model.n_input_channels
  batch_sharding = devices.batch_sharded(mesh)
  state = steps.abstract_state(config, model, tx, mesh)
  train_batch = {'image': jax.ShapeDtypeStruct((config.batch_size, h, w, c), jnp.uint8,
                                               sharding=batch_sharding),
                 'label': jax.ShapeDtypeStruct((config.batch_size,), jnp.int32,
                                               sharding=batch_sharding)}
  eval_batch = {'image': jax.ShapeDtypeStruct((config.eval_batch_size, h, w, c), jnp.float32,
                                              sharding=batch_sharding),
                'label': jax.ShapeDtypeStruct((config.eval_batch_size,), jnp.int32,
                                              sharding=batch_sharding),
                'mask': jax.ShapeDtypeStruct((config.eval_batch_size,), jnp.bool_,
                                             sharding=batch_sharding)}
  rng = jax.ShapeDtypeStruct((), jax.eval_shape(lambda: jax.random.key(0)).dtype,
                             sharding=devices.replicated(mesh))
  return state, train_batch, eval_batch, rng


def target_platform(topology: str) -> str:
  return 'gpu' if topology in GPUS else 'tpu'


def target_devices(topology: str):
  """The devices of a TPU topology, or the one device of a GPU target config."""
  if topology in COST_MODEL_CHIPS:  # one chip on its own host
    return topologies.get_topology_desc(topology_name=topology, platform='tpu',
                                        chips_per_host_bounds=[1, 1, 1]).devices, 'tpu'
  if topology not in GPUS:
    return topologies.get_topology_desc(topology_name=topology, platform='tpu').devices, 'tpu'
  os.environ.setdefault('JAX_SKIP_CUDA_CONSTRAINTS_CHECK', '1')
  with open(os.path.join(GPU_SPECS, GPUS[topology][3])) as f:
    spec = f.read()
  try:
    topo = topologies.get_topology_desc(platform='cuda', topology='1x1x1', target_config=spec)
  except Exception as e:  # pylint: disable=broad-except
    raise SystemExit(f'Cannot compile for {topology} here ({type(e).__name__}: '
                     f'{str(e).splitlines()[0] if str(e) else ""}); GPU targets need the CUDA '
                     'plugin: pip install "jax[cuda12]==<your jax version>".') from None
  return topo.devices, 'gpu'


# Without a GPU XLA cannot autotune, and its default Triton GEMM tiling fails on some shapes of the
# 224-px recipes ("Couldn't find output tile sizes"); those steps are compiled with cuBLAS GEMMs.
CUBLAS_GEMMS = {'xla_gpu_enable_triton_gemm': False}
GEMM_FALLBACKS = []  # what fell back, for the report


def _compile(lowered, platform: str):
  try:
    return lowered.compile()
  except Exception as e:  # pylint: disable=broad-except
    if platform != 'gpu' or 'tile sizes' not in str(e):
      raise
    GEMM_FALLBACKS.append(str(e).splitlines()[0][:160])
    return lowered.compile(compiler_options=CUBLAS_GEMMS)


def compile_steps(config, topology: str, kernel_platform=None, fused_attention=True,
                  with_eval=True):
  """(compiled train step, compiled eval step, model, mesh, seconds to compile both).

  `kernel_platform` traces the model's kernels for another platform than the target's (the GPU
  estimate's cost pass)."""
  problems = validation.problems(config, 1)
  if problems:
    raise SystemExit('error: ' + ' '.join(problems))
  target, platform = target_devices(topology)
  mesh = devices.make_mesh(target)
  _, variant = models.model_kwargs(config.model, **validation.model_kwargs(config))
  img = variant['img_size']
  h, w = (img, img) if isinstance(img, int) else tuple(img)
  source = data.SyntheticSource((h, w, variant.get('n_input_channels', 3)), variant['num_classes'])
  model, _ = train.build_model(config, source, platform=kernel_platform or platform)
  steps_per_epoch = max(1, source.num_train // config.batch_size)
  tx = optim.create_optimizer(config, optim.create_learning_rate_schedule(config, steps_per_epoch))
  fixed = input_pipeline.FIXED_SIZES.get(config.dataset) == (h, w)
  device_augment = input_pipeline.device_augment_for(config.aug, fixed, platform)
  t0 = time.perf_counter()
  # The cost pass counts the GPU step's work on a TPU, where cuDNN attention does not lower.
  with kernels.target(kernel_platform or platform,
                      fused_attention=fused_attention and kernel_platform is None):
    state, train_batch, eval_batch, rng = abstract_inputs(config, model, tx, mesh)
    train_step = steps.make_train_step(config, model, tx, mesh, steps_per_epoch=steps_per_epoch,
                                       device_augment=device_augment)
    compiled_train = _compile(train_step.lower(state, train_batch, rng), platform)
    compiled_eval = (_compile(steps.make_eval_step(model, mesh).lower(state.params, eval_batch),
                              platform) if with_eval else None)
  return compiled_train, compiled_eval, model, mesh, time.perf_counter() - t0


_CUSTOM_CALL = re.compile(r'custom_call_target="([^"]+)"')
_FUSION_KIND = re.compile(r'\bfusion\(.*?kind=(k\w+)')


def kernel_census(hlo_text: str) -> Dict[str, int]:
  """What a compiled GPU step runs, from its optimized HLO: vendor-library calls (cuDNN
  convolutions and fused attention, cuBLAS/cuBLASLt matmuls), Triton kernels and XLA's own
  fusions, by count."""
  census = {'cudnn_conv': 0, 'cudnn_attention': 0, 'cudnn_other': 0, 'cublas_gemm': 0,
            'triton': 0, 'xla_fusions': 0, 'other_custom_calls': 0}
  for line in hlo_text.splitlines():
    call = _CUSTOM_CALL.search(line)
    if call and ' custom-call(' in line:
      t = call.group(1)
      key = ('cudnn_conv' if t.startswith('__cudnn$conv') else
             'cudnn_attention' if t.startswith('__cudnn$fmha') or 'flash' in t else
             'cudnn_other' if t.startswith('__cudnn') else
             'cublas_gemm' if t.startswith('__cublas') else
             'triton' if 'triton' in t else 'other_custom_calls')
      census[key] += 1
    elif ' fusion(' in line and '= ' in line and 'calls=' in line:
      kind = _FUSION_KIND.search(line)
      if '__triton' in line:
        census['triton'] += 1
      elif '__cudnn' in line:
        census['cudnn_other'] += 1
      elif kind and kind.group(1) == 'kCustom' and 'gemm' in line:
        census['cublas_gemm'] += 1
      else:
        census['xla_fusions'] += 1
  return census


def costs(compiled) -> Dict[str, float]:
  """XLA's cost analysis of a compiled step: FLOPs and bytes accessed per device."""
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  return {k: float(cost.get(k, 0.)) for k in ('flops', 'bytes accessed')}


def scanned_costs(config, topology: str, kernel_platform=None, compiled=None):
  """(train, eval) costs of a scanned encoder's step, every iteration counted: XLA's cost analysis
  counts a loop body once, so the same scanned step is compiled again with `u` layers per
  iteration (`nn.scan(..., unroll=u)`, u the smallest divisor of the depth L above 1); one
  layer's loop iteration then costs (c_u - c_1) / (u - 1) and the step c_1 + (L - 1) times that.
  `compiled`: the (train, eval) steps already compiled with u = 1."""
  depth = models.create_model(config.model, **validation.model_kwargs(config)).num_layers
  u = next((d for d in range(2, depth + 1) if depth % d == 0), 1)
  one = compiled or compile_steps(config, topology, kernel_platform)[:2]
  if u == 1:
    return tuple(costs(step) for step in one)
  with mock.patch.object(nn, 'scan', functools.partial(nn.scan, unroll=u)):
    unrolled = compile_steps(config, topology, kernel_platform)[:2]
  return tuple({k: c1[k] + (depth - 1) * (cu[k] - c1[k]) / (u - 1) for k in c1}
               for c1, cu in ((costs(a), costs(b)) for a, b in zip(one, unrolled)))


def cost_pass(config, topology: str, compiled=None):
  """(train costs, eval costs, HLO text of the heaviest ops or None, the chip that counted them).

  A GPU step's come from the same step compiled for a TPU chip (XLA's GPU compiler has no cost
  analysis): a v5e chip, or a v5p chip when the step outgrows the v5e's memory. A scanned
  encoder's count every loop iteration (`scanned_costs`; `compiled`: a TPU target's steps)."""
  scanned = config.model_kwargs.get('scan_layers')
  if topology not in GPUS:
    if scanned:
      return (*scanned_costs(config, topology, compiled=compiled), None, topology)
    return None, None, None, topology
  for chip in COST_MODEL_CHIPS:
    try:
      if scanned:
        return (*scanned_costs(config, chip, 'gpu'), None, chip)
      train_step, eval_step, *_ = compile_steps(config, chip, 'gpu')
      return costs(train_step), costs(eval_step), train_step.as_text(), chip
    except Exception as e:  # pylint: disable=broad-except
      if 'RESOURCE_EXHAUSTED' not in str(e) or chip == COST_MODEL_CHIPS[-1]:
        raise
      print(f'  (the cost pass needs more than one {chip} chip holds: counting on '
            f'{COST_MODEL_CHIPS[-1]})')


def summarize(config, topology: str, compiled, compile_s: float, mesh, top: int,
              cost=None, cost_hlo=None, cost_chip=None) -> Dict:
  """The JSON record; `cost` (FLOPs, bytes) and `cost_hlo` (the text the heaviest ops come from)
  when they are not the compiled step's own (a GPU step has none: `cost_chip` counted them; a
  scanned one counts its loop once)."""
  peak, bandwidth, capacity = chip_figures(topology)
  cost = cost or costs(compiled)
  memory = compiled.memory_analysis()
  chips = len({tuple(getattr(d, 'coords', (d.id,))) for d in mesh.devices.flat})
  per_chip = mesh.size / chips  # devices (TensorCores) per chip: 2 on v4, else 1
  flops = float(cost.get('flops', 0.)) * per_chip  # XLA's figures are per device
  nbytes = float(cost.get('bytes accessed', 0.)) * per_chip
  hbm = per_chip * (memory.argument_size_in_bytes + memory.output_size_in_bytes
                    + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
  flop_s, byte_s = flops / peak, nbytes / bandwidth
  est = max(flop_s, byte_s)
  return {
      'config': config.get('name', ''), 'model': config.model, 'topology': topology,
      'chips': chips, 'hosts': len({d.process_index for d in mesh.devices.flat}),
      'batch_per_chip': config.batch_size / chips, 'compile_s': round(compile_s, 1),
      'flops_per_chip': flops, 'bytes_per_chip': nbytes, 'hbm_bytes_per_chip': int(hbm),
      'hbm_capacity_bytes': capacity, 'fits': hbm <= capacity,
      'flop_bound_step_s': flop_s, 'memory_bound_step_s': byte_s, 'est_step_s': est,
      'est_images_per_sec': config.batch_size / est if est else None,
      'aug_on_device': augment.on_device(config.aug.on_device, target_platform(topology)),
      'heaviest_ops': heaviest_ops(cost_hlo or compiled.as_text(), top),
      'scan_layers': bool(config.model_kwargs.get('scan_layers')),
      **({'kernels': kernel_census(compiled.as_text()),
          'cost_model': f'tpu {cost_chip} (same step)',
          'cublas_gemm_fallback': bool(GEMM_FALLBACKS)} if topology in GPUS else {}),
  }


def hbm_bytes(compiled) -> int:
  """Arguments + outputs + temporaries - donated aliases: what one device holds for the step."""
  m = compiled.memory_analysis()
  return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
          - m.alias_size_in_bytes)


def largest_batch(config, topology: str, multiple: int = 8, max_compiles: int = 8,
                  upper: int = 0) -> Dict:
  """The largest train batch (a multiple of `multiple`) whose step fits the device by XLA's memory
  analysis, within 5%: the recipe's batch and twice it (or `upper`) give a slope to extrapolate
  from, then a bisection between the largest batch that fitted and the smallest that did not."""
  capacity = chip_figures(topology)[2]
  tried = {}

  def need(batch):
    if batch not in tried:
      c = config.copy_and_resolve_references()
      c.batch_size = batch
      tried[batch] = hbm_bytes(compile_steps(c, topology, with_eval=False)[0])
    return tried[batch]

  round_down = lambda b: max(multiple, int(b) // multiple * multiple)
  b0 = config.batch_size
  need(b0)
  need(upper or 2 * b0)
  while len(tried) < max_compiles:
    fits = [b for b, m in tried.items() if m <= capacity]
    fails = [b for b, m in tried.items() if m > capacity]
    lo, hi = max(fits, default=0), min(fails, default=None)
    if hi is not None and hi - lo <= max(multiple, lo // 20):
      break
    if hi is None:  # extrapolate from the two largest batches tried
      (b1, m1), (b2, m2) = sorted(tried.items())[-2:]
      slope = max((m2 - m1) / (b2 - b1), 1.0)
      guess = round_down(b2 + (capacity - m2) / slope)
      candidate = guess if guess > lo else round_down(lo * 1.25)
    else:
      candidate = round_down((lo + hi) / 2)
    if candidate in tried or candidate <= lo:
      break
    need(candidate)
  fits = [b for b, m in tried.items() if m <= capacity]
  best = max(fits, default=None)
  return {'config': config.get('name', ''), 'topology': topology, 'recipe_batch': b0,
          'recipe_batch_hbm_bytes': tried[b0], 'largest_batch': best,
          'largest_batch_hbm_bytes': tried.get(best), 'capacity_bytes': capacity,
          'smallest_failing_batch': min((b for b in tried if b not in fits), default=None),
          'cublas_gemm_fallback': bool(GEMM_FALLBACKS),
          'compiled_batches': {b: tried[b] for b in sorted(tried)}}


def main(argv):
  del argv
  logging.set_verbosity(logging.ERROR)
  config = FLAGS.config
  config_path = [a.split('=', 1)[1] for a in sys.argv if a.startswith('--config=')]
  with config.unlocked():
    config.name = os.path.splitext(os.path.basename(config_path[0]))[0] if config_path else ''
  t0 = time.perf_counter()
  if FLAGS.largest_batch:
    result = largest_batch(config, FLAGS.topology, max_compiles=FLAGS.max_compiles,
                           upper=FLAGS.upper_batch)
    print(f'{config.model} ({result["config"]}) on {FLAGS.topology}: the config\'s batch '
          f'{result["recipe_batch"]} needs {result["recipe_batch_hbm_bytes"] / 2**30:.2f} GiB; the '
          f'largest batch found to fit is {result["largest_batch"]} '
          f'({(result["largest_batch_hbm_bytes"] or 0) / 2**30:.2f} of '
          f'{result["capacity_bytes"] / 2**30:.1f} GiB; {result["smallest_failing_batch"]} does '
          'not fit).')
    print(json.dumps(result))
    gib = lambda b: round(b / 2**30, 2) if b else None
    record('largest_batch', {'config': config.name, 'topology': FLAGS.topology,
                             'dtype': config.dtype}, {
        'recipe_batch': result['recipe_batch'],
        'recipe_batch_hbm_gib': gib(result['recipe_batch_hbm_bytes']),
        'largest_batch': result['largest_batch'],
        'largest_batch_hbm_gib': gib(result['largest_batch_hbm_bytes']),
        'smallest_failing_batch': result['smallest_failing_batch'],
        'wall_s': round(time.perf_counter() - t0, 1)})
    return
  compiled_train, compiled_eval, _, mesh, compile_s = compile_steps(
      config, FLAGS.topology, fused_attention=FLAGS.fused_attention)
  train_cost, eval_cost, cost_hlo, cost_chip = cost_pass(config, FLAGS.topology,
                                                          (compiled_train, compiled_eval))
  if train_cost is None:  # a TPU step counts its own
    train_cost, eval_cost = costs(compiled_train), costs(compiled_eval)
  result = summarize(config, FLAGS.topology, compiled_train, compile_s, mesh, FLAGS.top,
                     cost=train_cost, cost_hlo=cost_hlo, cost_chip=cost_chip)
  if FLAGS.dump_hlo:
    with open(FLAGS.dump_hlo, 'w') as f:
      f.write(compiled_train.as_text())
  result['eval_flops_per_chip'] = eval_cost['flops']
  if FLAGS.topology in GPUS:
    result['eval_kernels'] = kernel_census(compiled_eval.as_text())
    result['eval_hbm_bytes_per_chip'] = hbm_bytes(compiled_eval)
  print(f'{result["model"]} ({result["config"]}) on {FLAGS.topology}: {result["chips"]} chip(s) on '
        f'{result["hosts"]} host(s), {result["batch_per_chip"]:g} images per chip, compiled in '
        f'{compile_s:.0f} s (train and eval steps).')
  print(f'  per chip and step: {result["flops_per_chip"] / 1e12:.3f} TFLOP, '
        f'{result["bytes_per_chip"] / 1e9:.2f} GB moved, HBM {result["hbm_bytes_per_chip"] / 2**30:.2f}'
        f' of {result["hbm_capacity_bytes"] / 2**30:.0f} GiB')
  print(f'  ESTIMATE (roofline from published peaks, not a measurement): '
        f'{result["est_step_s"] * 1e3:.2f} ms/step (FLOP-bound {result["flop_bound_step_s"] * 1e3:.2f}'
        f' ms, memory-bound {result["memory_bound_step_s"] * 1e3:.2f} ms), '
        f'{result["est_images_per_sec"]:,.0f} images/s')
  if 'kernels' in result:
    for step in ('kernels', 'eval_kernels'):
      print(f'  {step.replace("_", " ")}: ' + ', '.join(f'{k} {v}' for k, v in result[step].items()
                                                       if v))
    print(f'  (FLOPs and bytes: the same step through the TPU cost model, on {cost_chip})')
  if result['scan_layers']:
    print('  (scanned encoder: FLOPs and bytes of every loop iteration, from the same step compiled '
          'again with more layers per iteration)')
  print('  heaviest ops by bytes touched:')
  for op in result['heaviest_ops']:
    print(f'    {op["bytes"] / 1e6:10.1f} MB  {op["op"]:<28} {op["from"]}')
  print(json.dumps(result))
  est_ms = round(result['est_step_s'] * 1e3, 2) if result['est_step_s'] else None
  if FLAGS.topology in GPUS:
    record('compile_gpu', {'config': config.name, 'batch_size': config.batch_size,
                           'dtype': config.dtype,
                           'overrides': _overrides('--config.batch_size=', '--config.dtype=')}, {
        'train_hbm_gib': round(result['hbm_bytes_per_chip'] / 2**30, 2),
        'train_kernels': _census_text(result['kernels']),
        'eval_hbm_gib': round(result['eval_hbm_bytes_per_chip'] / 2**30, 2),
        'eval_kernels': _census_text(result['eval_kernels']), 'est_ms_per_step': est_ms})
  else:
    record('compile_tpu', {'config': config.name, 'topology': FLAGS.topology,
                           'overrides': _overrides()}, {
        'tflop_per_chip': round(result['flops_per_chip'] / 1e12, 3),
        'gb_per_chip': round(result['bytes_per_chip'] / 1e9, 2),
        'hbm_gib_per_chip': round(result['hbm_bytes_per_chip'] / 2**30, 2),
        'est_ms_per_step': est_ms, 'compile_s': round(compile_s)})


def _overrides(*recorded) -> str:
  """The command's flags other than the config file, the target, the results file and those
  `recorded` in the setting already."""
  return ' '.join(a for a in sys.argv[1:]
                  if not a.startswith(('--config=', '--topology=', '--results=', *recorded)))


def _census_text(census: Dict[str, int]) -> str:
  return ', '.join(f'{n} {k.replace("_", " ")}' for k, n in census.items() if n)


def record(benchmark: str, setting, figures):
  path = FLAGS.results if FLAGS.results is not None else results.default_path(benchmark)
  results.record(path, benchmark, setting, figures)


if __name__ == '__main__':
  flags.mark_flag_as_required('config')
  app.run(main)
