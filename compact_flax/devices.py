"""Devices: the data-parallel mesh, and splitting a CPU-only host into several XLA devices.

Parameters and optimizer state are replicated; batches are sharded on the mesh's 'data' axis.
The same mesh serves one CPU, eight GPUs or a TPU pod.
"""

import glob
import importlib.metadata
import os
from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

IMAGES_PER_CPU_DEVICE = 8  # measured on 2 cores: docs/notes.md
CPU_DEVICES_PER_CORE = 8
MIN_SPLIT_IMAGE_SIDE = 32  # smaller inputs (the 8x8 digits) train slower split: docs/notes.md


# Set by `set_cpu_devices`: the split CPU has one more device, kept out of the mesh for host work.
_spare_cpu_device = False


def make_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A one-axis ('data') mesh over `devices` (default: every device of every process, but the
  spare CPU device of a split CPU)."""
  if devices is None:
    devices = jax.devices()
    if _spare_cpu_device and devices[0].platform == 'cpu':
      devices = devices[:-1]
  return Mesh(np.asarray(devices), ('data',))


def host_device() -> jax.Device:
  """The CPU device for host work such as the augmentation: on a split CPU the spare device, where
  it runs beside the train steps instead of queueing behind them on a mesh device (XLA runs one
  device's computations in order); else the first CPU device."""
  cpus = jax.devices('cpu')
  return cpus[-1] if _spare_cpu_device else cpus[0]


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the devices."""
  return NamedSharding(mesh, P('data'))


def cpu_device_count(batch_size: int, eval_batch_size: int, cores: int) -> int:
  """The most XLA CPU devices of at least 8 images each (and at most 8 per core) that divide both
  batch sizes.

  On CPU, data parallelism over many small devices keeps the cores busy and each device's
  activations in cache. It pays for 32x32 inputs, not for tiny ones, and larger inputs want fewer
  images per device (docs/notes.md).
  """
  target = max(1, min(batch_size // IMAGES_PER_CPU_DEVICE, CPU_DEVICES_PER_CORE * cores))
  return max(d for d in range(1, target + 1) if batch_size % d == 0 and eval_batch_size % d == 0)


def auto_cpu_devices(img_size) -> int:
  """The `set_cpu_devices` count a CPU-only host uses by default: -1 (split) for images of at
  least 32x32, where the split was measured to help; 0 for smaller images and for text."""
  if img_size is None:
    return 0
  sides = (img_size,) * 2 if isinstance(img_size, int) else tuple(img_size)
  return -1 if min(sides) >= MIN_SPLIT_IMAGE_SIDE else 0


# Device files of the accelerators JAX's plugins drive (GPUs; TPU VMs: accel* or vfio groups).
_ACCELERATOR_DEVICE_FILES = ('/dev/nvidia[0-9]*', '/dev/kfd', '/dev/accel[0-9]*', '/dev/vfio/[0-9]*')


def _accelerator_present() -> bool:
  """Whether a GPU/TPU plugin is installed and its hardware is there (libtpu installed for the
  compile tool on a CPU-only machine does not count), judged without starting JAX."""
  names = {(d.metadata['Name'] or '').lower().replace('_', '-')
           for d in importlib.metadata.distributions()}
  if not any(n.startswith(('jax-cuda', 'jax-rocm', 'libtpu')) for n in names):
    return False
  return any(glob.glob(pattern) for pattern in _ACCELERATOR_DEVICE_FILES)


def set_cpu_devices(count: int, batch_size: int, eval_batch_size: Optional[int] = None) -> int:
  """Splits the CPU into `count` XLA devices for the mesh, plus a spare one for host work
  (`host_device`), before JAX starts; -1: `cpu_device_count`.

  -1 applies only where no GPU/TPU is present (or JAX_PLATFORMS=cpu); accelerator backends are
  never affected. Returns the count set; 0 when `count` is 0, when the user chose
  through JAX_NUM_CPU_DEVICES or XLA_FLAGS, or when JAX has already started.
  """
  if not count or os.environ.get('JAX_NUM_CPU_DEVICES') or (
      'host_platform_device_count' in os.environ.get('XLA_FLAGS', '')):
    return 0
  if count < 0:
    if os.environ.get('JAX_PLATFORMS') != 'cpu' and _accelerator_present():
      return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    count = cpu_device_count(batch_size, eval_batch_size or batch_size, cores or 1)
  global _spare_cpu_device
  try:
    jax.config.update('jax_num_cpu_devices', count + 1)
  except RuntimeError:  # backends already initialised
    return 0
  _spare_cpu_device = True
  return count
