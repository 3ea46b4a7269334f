"""The real train and eval steps compiled for an H100 without a GPU (XLA's GPU compiler)."""

import importlib.util

import pytest

if importlib.util.find_spec('jax_cuda12_plugin') is None:
  pytest.skip('needs the CUDA plugin (pip install "jax[cuda12]==<jax version>", about 5 GB); '
              'CI does not install it', allow_module_level=True)

from benchmarks import compile_tpu  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import cifar10_cct7  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_small_step_compiles_for_an_h100_with_vendor_kernels():
  config = cifar10_cct7.get_config()
  config.model, config.dtype = 'cct_2_3x2_32', 'bfloat16'
  config.batch_size, config.eval_batch_size = 64, 64
  train, evaluate, _, mesh, _ = compile_tpu.compile_steps(config, 'h100')
  assert mesh.size == 1 and mesh.devices.flat[0].device_kind == 'NVIDIA H100 80GB HBM3'
  assert 0 < compile_tpu.hbm_bytes(train) < compile_tpu.GPUS['h100'][2]
  census = compile_tpu.kernel_census(train.as_text())
  assert census['cudnn_conv'] >= 2, census  # the tokenizer's two convolutions, through cuDNN
  # Attention dropout keeps training on the explicit softmax; evaluation uses cuDNN's attention.
  assert census['cudnn_attention'] == 0, census
  assert compile_tpu.kernel_census(evaluate.as_text())['cudnn_attention'] == 2
