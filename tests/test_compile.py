"""The real train step compiled for a TPU slice without TPUs (XLA's TPU compiler, libtpu)."""

import os

import jax
import pytest

# Two test processes compiling for TPU topologies at once: libtpu's lockfile would stop the second.
os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')

pytest.importorskip('libtpu', reason='needs XLA\'s TPU compiler: pip install "compact-flax[tpu]"')

from benchmarks import compile_tpu  # pylint: disable=g-import-not-at-top,wrong-import-position
from compact_flax import devices  # pylint: disable=g-import-not-at-top,wrong-import-position
from compact_flax import input_pipeline
from compact_flax import optim
from compact_flax import steps
from configs import cifar10_cct7


def _config():
  config = cifar10_cct7.get_config()
  config.model = 'cct_2_3x2_32'
  config.batch_size, config.eval_batch_size = 64, 64
  return config


def test_the_train_step_compiles_for_a_two_host_slice():
  config = _config()
  compiled, _, model, mesh, _ = compile_tpu.compile_steps(config, 'v4:2x2x2')
  result = compile_tpu.summarize(config, 'v4:2x2x2', compiled, 0.0, mesh, top=5)
  assert (result['hosts'], result['chips'], result['batch_per_chip']) == (2, 8, 8.0)
  assert result['fits'] and result['est_step_s'] > 0
  assert result['heaviest_ops'] and all(op['bytes'] > 0 for op in result['heaviest_ops'])
  # The same step compiled for one CPU device does the same work, within what separates the two
  # backends' kernels and cost models (the TPU count is about 1.35x the CPU's for this step).
  cpu_mesh = devices.make_mesh(jax.devices()[:1])
  tx = optim.create_optimizer(config, optim.create_learning_rate_schedule(config, 100))
  state, batch, _, rng = compile_tpu.abstract_inputs(config, model, tx, cpu_mesh)
  step = steps.make_train_step(config, model, tx, cpu_mesh, steps_per_epoch=100,
                               device_augment=input_pipeline.device_augment_for(config.aug, True))
  cost = step.lower(state, batch, rng).compile().cost_analysis()
  cpu_flops = float((cost[0] if isinstance(cost, (list, tuple)) else cost)['flops'])
  assert 0.8 < result['flops_per_chip'] * result['chips'] / cpu_flops < 1.6, (result, cpu_flops)


def test_a_gpu_step_too_big_for_a_v5e_chip_is_counted_on_a_v5p_chip(monkeypatch):
  """XLA's GPU compiler gives no FLOPs or bytes: the same step compiled by the TPU cost model
  gives them, on one v5e chip (16 GiB), or on one v5p chip when it needs more. (The compilations
  are stood in for here; docs/notes.md has the real case.)"""
  class Compiled:
    def __init__(self, flops):
      self.flops = flops
    def cost_analysis(self):
      return {'flops': self.flops, 'bytes accessed': 2 * self.flops}
    def as_text(self):
      return 'HloModule step'
  chips = []
  def compile_steps(config, topology, kernel_platform=None, **kwargs):
    del config, kwargs
    chips.append((topology, kernel_platform))
    if topology == 'v5e:1x1':  # as XLA's TPU compiler says it for a step beyond the chip's HBM
      raise RuntimeError('RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory '
                         'in memory space hbm. Used 17.2G of 15.75G hbm. Exceeded hbm capacity.')
    return Compiled(3.0), Compiled(1.0), None, None, 0.0
  monkeypatch.setattr(compile_tpu, 'compile_steps', compile_steps)
  train_cost, eval_cost, hlo, chip = compile_tpu.cost_pass(_config(), 'h100')
  assert chips == [('v5e:1x1', 'gpu'), ('v5p:1x1x1', 'gpu')] and chip == 'v5p:1x1x1'
  assert train_cost == {'flops': 3.0, 'bytes accessed': 6.0} and eval_cost['flops'] == 1.0
  assert hlo == 'HloModule step'
  def other_error(*args, **kwargs):
    raise RuntimeError('INVALID_ARGUMENT: something else')
  monkeypatch.setattr(compile_tpu, 'compile_steps', other_error)
  with pytest.raises(RuntimeError, match='something else'):
    compile_tpu.cost_pass(_config(), 'h100')
  # A TPU target counts its own step.
  assert compile_tpu.cost_pass(_config(), 'v5e:2x2') == (None, None, None, 'v5e:2x2')


@pytest.mark.parametrize('start, upper', [(128, 0), (5840, 7048)])
def test_the_largest_batch_search_brackets_the_limit_within_five_percent(monkeypatch, start, upper):
  capacity = compile_tpu.GPUS['h100'][2]
  need = lambda batch: 2e9 + 1.2e7 * batch + 40.0 * batch ** 2  # grows faster than linearly
  true_max = max(b for b in range(8, 20000, 8) if need(b) <= capacity)
  compiled = []
  def fake_compile(config, topology, with_eval=True):
    compiled.append(config.batch_size)
    return (config.batch_size,)
  monkeypatch.setattr(compile_tpu, 'compile_steps', fake_compile)
  monkeypatch.setattr(compile_tpu, 'hbm_bytes', need)
  config = _config()
  config.batch_size = start
  result = compile_tpu.largest_batch(config, 'h100', upper=upper)
  assert compiled[:2] == [start, upper or 2 * start]
  best, failing = result['largest_batch'], result['smallest_failing_batch']
  assert best % 8 == 0 and need(best) <= capacity < need(failing)
  assert failing - best <= max(8, best // 20) and best <= true_max < failing


def test_a_scanned_encoder_is_counted_layer_by_layer():
  """XLA counts a loop body once; the tool counts every iteration of the scanned encoder, so the
  scanned step does the unrolled step's FLOPs and moves at least about its bytes."""
  config = _config()
  config.model = 'cct_4_3x2_32'
  unrolled = compile_tpu.costs(compile_tpu.compile_steps(config, 'v4:2x2x2', with_eval=False)[0])
  config.model_kwargs.scan_layers = True
  compiled = compile_tpu.compile_steps(config, 'v4:2x2x2')[:2]
  once = compile_tpu.costs(compiled[0])
  scanned, _ = compile_tpu.scanned_costs(config, 'v4:2x2x2', compiled=compiled)
  assert once['flops'] < 0.75 * unrolled['flops']  # the loop of four layers counted as one
  assert abs(scanned['flops'] / unrolled['flops'] - 1) < 0.05, (scanned, unrolled)
  assert scanned['bytes accessed'] > max(once['bytes accessed'],
                                         0.9 * unrolled['bytes accessed']), (scanned, unrolled)
