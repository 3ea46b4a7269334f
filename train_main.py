"""Trains or evaluates a Compact Transformer from an ml-collections config.

  python train_main.py --config=configs/digits_cct.py --workdir=/tmp/digits_cct
  python train_main.py --config=configs/cifar10_cct7.py --workdir=DIR --config.batch_size=256

Multi-host: pass --coordinator_address, --num_processes and --process_id on each host (on a TPU
pod leave them out and JAX finds its peers). Intentionally short: the logic is in
compact_flax/train.py.
"""

import signal
import threading

# Caught from the first moment: a SIGTERM or Ctrl-C during start-up stops the run cleanly.
STOP = threading.Event()
for _sig in (signal.SIGTERM, signal.SIGINT):
  signal.signal(_sig, lambda *_: STOP.set())

# pylint: disable=g-import-not-at-top,wrong-import-position
import os
import re
import runpy
import sys
from typing import Optional

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from compact_flax import devices
from compact_flax import models
from compact_flax import train
from compact_flax import validation

config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints and metrics.', required=True)
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0, for multi-host runs.')
flags.DEFINE_integer('num_processes', None, 'Number of processes (hosts) in a multi-host run.')
flags.DEFINE_integer('process_id', None, 'This process\'s index in a multi-host run.')
flags.DEFINE_integer('cpu_devices', None, 'CPU-only hosts: data parallelism over this many XLA '
                     'devices; -1: one per 8 images of the batch (faster for 32x32 models, slower '
                     'for tiny ones: docs/notes.md); 0: JAX\'s default; unset: -1 for '
                     'images of at least 32x32, else 0.')
CACHE_MAX_BYTES = 4 << 30
flags.DEFINE_string('compilation_cache', None, 'Directory where XLA\'s compiled programs are kept '
                    'between runs: a later run of the same model, batch, schedule and devices '
                    '(another seed, a relaunch) starts without compiling. Unset: '
                    '$JAX_COMPILATION_CACHE_DIR, else ~/.cache/compact_flax/xla; \'\': off. It '
                    f'keeps at most {CACHE_MAX_BYTES >> 30} GiB (the least recently used go '
                    'first) unless $JAX_COMPILATION_CACHE_MAX_SIZE (bytes; -1: no limit) says '
                    'otherwise.')
FLAGS = flags.FLAGS


def compilation_cache_dir(flag: Optional[str]) -> Optional[str]:
  """Where XLA's persistent cache goes: the flag, JAX's own variable, or the user's cache folder."""
  if flag is not None:
    return os.path.expanduser(flag) or None
  if os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    return os.environ['JAX_COMPILATION_CACHE_DIR']
  home = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(home, 'compact_flax', 'xla')


def configure_compilation_cache(flag: Optional[str]):
  """Turns on XLA's persistent cache (`compilation_cache_dir`), size-bounded unless set."""
  jax.config.update('jax_compilation_cache_dir', compilation_cache_dir(flag))
  if 'JAX_COMPILATION_CACHE_MAX_SIZE' not in os.environ:
    jax.config.update('jax_compilation_cache_max_size', CACHE_MAX_BYTES)


def parse_flags(argv):
  """absl's parsing, with one-line errors: an override naming no config field gets close names."""
  try:
    return FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    message = str(e).splitlines()[0] if str(e) else type(e).__name__
    paths = [a.split('=', 1)[1] for a in argv if a.startswith('--config=')]
    overrides = [m.group(1) for a in argv for m in [re.match(r'--config\.([\w.]+)', a)] if m]
    if paths and overrides:
      try:
        config = runpy.run_path(paths[-1])['get_config']()
        message = ' '.join(validation.unknown_overrides(config, overrides)) or message
      except Exception:  # pylint: disable=broad-except
        pass
    print(f'error: {message}', file=sys.stderr)
    sys.exit(1)


def join_processes(coordinator_address: Optional[str], num_processes: Optional[int],
                   process_id: Optional[int]) -> bool:
  """Joins the other processes of a multi-host run, if this is one; whether it is."""
  if not (coordinator_address or num_processes
          or os.environ.get('TPU_WORKER_HOSTNAMES', 'localhost') != 'localhost'):
    return False
  # JAX's preemption service would put its own SIGTERM handler in place of `STOP`'s and keep the
  # notice to itself; the trainer agrees on its stops with the other processes itself.
  jax.config.update('jax_enable_preemption_service', False)
  if coordinator_address or num_processes:
    # CPU processes exchange gradients over gloo (no effect on GPU or TPU).
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  else:
    jax.distributed.initialize()  # a TPU pod: JAX finds its peers itself
  return True


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  configure_compilation_cache(FLAGS.compilation_cache)
  if not join_processes(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id):
    config = FLAGS.config
    count = FLAGS.cpu_devices
    if count is None:
      try:
        _, variant = models.model_kwargs(config.model, **validation.model_kwargs(config))
      except (ValueError, TypeError):  # a bad model or argument: the trainer says which
        variant = {}
      count = devices.auto_cpu_devices(variant.get('img_size'))
    devices.set_cpu_devices(count, config.batch_size // config.grad_accum_steps,
                            config.eval_batch_size)
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir, stop_event=STOP)
  except train.TrainingError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  finally:
    # The run is over. While Python shuts down it restores SIGTERM's default action, so a
    # pre-emption notice arriving now would kill a process that has finished cleanly.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
  return 0


if __name__ == '__main__':
  flags.mark_flag_as_required('config')
  app.run(main, flags_parser=parse_flags)
