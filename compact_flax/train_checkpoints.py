"""Training checkpoints: one Orbax manager under `WORKDIR/checkpoints/<step>`.

It keeps the latest `keep` steps and the best step by eval top-1. Each step holds `state`, `model`
(the JSON spec), `integrity` (CRC-32 of every array, checked on restore) and, when evaluated,
Orbax's `metrics`. What can go wrong, and what happens:

  - a step whose files are damaged is moved to `checkpoints/damaged/` (never deleted) and the run
    resumes from the newest intact step, saying which and why;
  - a save that would not fit on the disk is refused before it starts, and one that fails
    midway is cleaned up; the last complete step stays;
  - steps Orbax retires are first moved to `checkpoints/.trash/`, then removed: a kill during the
    removal leaves nothing half-deleted among the steps.
"""

import errno
import logging
import os
import shutil
import sys
import threading
import time
from typing import Any, List, Mapping, Optional

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from compact_flax import checkpoint
from compact_flax.errors import TrainingError

TRASH, DAMAGED = '.trash', 'damaged'


def _top1(metrics) -> float:
  return metrics['eval_top1']


def _no_space(e: BaseException) -> bool:
  return (isinstance(e, OSError) and e.errno == errno.ENOSPC) or 'No space left' in str(e)


class _QuietOrbaxFailures(logging.Filter):
  """Drops the error logs of Orbax's writer threads (and of the asyncio tasks they leave behind):
  every failure they describe reaches the user as one line from `TrainCheckpoints`. Also its
  warning on every save between evaluations, which is how this manager is meant to be used."""

  def filter(self, record):
    if 'orbax' in record.pathname and str(record.msg).startswith('Requested `tracked_metric`'):
      return False  # a step saved between evaluations: ranked by the next evaluated one
    return not (record.levelno >= logging.ERROR and (
        'orbax' in record.pathname or 'orbax' in str(record.msg) or
        'orbax' in str(getattr(record, 'args', '') or '')))


_QUIET_ORBAX_FAILURES = _QuietOrbaxFailures()
_LOGGERS = ('absl', 'asyncio')


def _quiet_closed_loop_hook(previous):
  """After a failed write, tensorstore completes Orbax's remaining writes into an event loop Orbax
  has closed; each reports 'Event loop is closed' through sys.unraisablehook. Those alone are
  dropped."""
  def hook(unraisable):
    last = unraisable.exc_traceback
    while last is not None and last.tb_next is not None:
      last = last.tb_next
    if not (unraisable.exc_type is RuntimeError and last is not None and
            str(unraisable.exc_value) == 'Event loop is closed' and
            last.tb_frame.f_code.co_name == '_check_closed'):
      previous(unraisable)
  hook.quiet_closed_loop = True
  return hook



def _nbytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def _one_replica(state):
  """In a one-process run, replicated arrays as their copy on one device: Orbax's save costs grow
  with the device count (a CPU split into 16 devices: about 1 s per save instead of 0.1-0.3 s,
  the first 7 s). Restoring lays them out on whatever mesh asks."""
  if jax.process_count() > 1:
    return state
  def one(x):
    if isinstance(x, jax.Array) and len(x.sharding.device_set) > 1 and x.is_fully_replicated:
      return x.addressable_shards[0].data
    return x
  return jax.tree.map(one, state)


class TrainCheckpoints:
  """Saves and restores the train state of one workdir; `notes` holds what the user should hear."""

  def __init__(self, workdir: str, spec: Mapping[str, Any], *, keep: int, async_save: bool = True):
    self.spec = dict(spec)
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self.notes: List[str] = []
    self._writing: Optional[int] = None
    self._emptying: Optional[threading.Thread] = None
    try:
      os.makedirs(self.directory, exist_ok=True)
    except OSError as e:
      raise TrainingError(f'Cannot create {self.directory} ({e.strerror}).') from None
    self._empty_trash()
    for step in checkpoint.steps(self.directory):
      problem = checkpoint.step_problem(os.path.join(self.directory, str(step)))
      if problem:
        self._set_aside(step, problem)
    policies = ocp.checkpoint_managers
    options = ocp.CheckpointManagerOptions(
        create=True, best_fn=_top1, best_mode='max', enable_async_checkpointing=async_save,
        todelete_subdir=TRASH, cleanup_tmp_directories=True,
        preservation_policy=policies.AnyPreservationPolicy([
            policies.LatestN(n=keep),
            policies.BestN(get_metric_fn=_top1, n=1, keep_checkpoints_without_metrics=False)]))
    try:
      self.manager = ocp.CheckpointManager(self.directory, item_handlers=self._handlers(),
                                           options=options)
    except Exception as e:  # pylint: disable=broad-except
      raise TrainingError(f'Cannot open the checkpoints in {self.directory} '
                          f'({checkpoint.short_reason(e)}); move them away or use a new '
                          '--workdir.') from None

  @staticmethod
  def _handlers():
    return dict(state=ocp.StandardCheckpointHandler(), model=ocp.JsonCheckpointHandler(),
                integrity=ocp.JsonCheckpointHandler())

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  # --- Saving ------------------------------------------------------------------------------------

  def save(self, state, step: int, metrics: Optional[Mapping[str, Any]] = None):
    """Saves `state` as `step` unless that step is saved already; `metrics` rank it for best."""
    if self.manager.latest_step() == step:
      return
    self._guard(self.manager.wait_until_finished)  # a failed background save surfaces here
    needed = int(_nbytes(state) * 1.05) + (256 << 10)
    free = shutil.disk_usage(self.directory).free
    if free < needed:
      raise TrainingError(
          f'Not enough space for the checkpoint of step {step}: it needs about {needed >> 20} MiB '
          f'and {self.directory} has {free >> 20} MiB free. Free some space or use a --workdir '
          f'on another disk; {self._kept()}.')
    if metrics is not None:
      metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    state = _one_replica(state)
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              model=ocp.args.JsonSave(self.spec),
                              integrity=ocp.args.JsonSave({'state': checkpoint.fingerprint(state)}))
    self._writing = step
    self._guard(lambda: self.manager.save(step, args=args, metrics=metrics))
    self._empty_trash(background=True)

  def _guard(self, fn):
    """Runs an Orbax call; a full disk or a failed write becomes one line, minus its leftovers."""
    try:
      fn()
    except Exception as e:  # pylint: disable=broad-except
      for name in os.listdir(self.directory):
        if '.orbax-checkpoint-tmp' in name:
          shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
      what = f'the checkpoint of step {self._writing} to {self.directory}'
      if _no_space(e):
        raise TrainingError(f'No space left on the device while writing {what}; the unfinished '
                            f'checkpoint was removed and {self._kept()}. Free some space and '
                            'relaunch to resume.') from None
      raise TrainingError(f'Writing {what} failed ({checkpoint.short_reason(e)}); '
                          f'{self._kept()}.') from None

  def _kept(self) -> str:
    """Which complete checkpoint a relaunch resumes from."""
    done = [s for s in checkpoint.steps(self.directory)
            if os.path.exists(os.path.join(self.directory, str(s), '_CHECKPOINT_METADATA'))]
    return (f'a relaunch resumes from step {max(done)}, the last complete checkpoint' if done
            else 'no checkpoint has been completed yet')

  def _empty_trash(self, background: bool = False):
    """Removes the steps Orbax retired; `background`: in a thread, so saves do not wait for it."""
    if self._emptying is not None:
      self._emptying.join()
      self._emptying = None
    trash = os.path.join(self.directory, TRASH)
    names = os.listdir(trash) if jax.process_index() == 0 and os.path.isdir(trash) else []
    if not names:
      return

    def remove():
      for name in names:
        shutil.rmtree(os.path.join(trash, name), ignore_errors=True)
    if not background:
      remove()
      return
    self._emptying = threading.Thread(target=remove, daemon=True, name='compact_flax-trash')
    self._emptying.start()

  def _set_aside(self, step: int, problem: str):
    """Moves a damaged step to `checkpoints/damaged/` (process 0), and says so."""
    target = os.path.join(self.directory, DAMAGED, f'{step}-{time.strftime("%Y%m%d-%H%M%S")}')
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(target), exist_ok=True)
      os.rename(os.path.join(self.directory, str(step)), target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'compact_flax set aside {step}')
    self.notes.append(f'The checkpoint of step {step} is damaged ({problem}); it was moved to '
                      f'{target} (nothing is deleted).')

  # --- Restoring ---------------------------------------------------------------------------------

  def restore_latest(self, abstract_state):
    """The newest intact state (shaped and sharded like `abstract_state`), or None.

    A workdir written with separate `checkpoints/last` and `checkpoints/best` managers resumes
    from `last`; new steps are written in the current layout.
    """
    legacy = os.path.join(self.directory, 'last')
    if self.manager.latest_step() is None and checkpoint.steps(legacy):
      for step in reversed(checkpoint.steps(legacy)):
        state = self._restore(os.path.join(legacy, str(step)), abstract_state)
        if state is not None:
          return state
    while self.manager.latest_step() is not None:
      step = self.manager.latest_step()
      state = self._restore(os.path.join(self.directory, str(step)), abstract_state)
      if state is not None:
        return state
      self.manager.reload()
    if self.notes:  # there were checkpoints, and none is intact: starting over is for the user
      raise TrainingError(' '.join(self.notes) + ' No intact checkpoint is left to resume from; '
                          'relaunch to start from step 0, or move the damaged ones back.')
    return None

  def _restore(self, step_dir: str, abstract_state):
    """The state in `step_dir`, or None (and the step set aside) when it is damaged."""
    ignore = lambda s: (s['model'], {k: v for k, v in s['model_kwargs'].items()
                                     if k != 'dtype' and v is not None})
    try:
      stored = checkpoint.read_json(os.path.join(step_dir, 'model', 'metadata'))
      if ignore(stored) != ignore(self.spec):
        raise TrainingError(f'The workdir holds a checkpoint of {ignore(stored)} but the config '
                            f'builds {ignore(self.spec)}: use a new --workdir, or the config it '
                            'was trained with.')
      with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        state = ckptr.restore(step_dir, ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))['state']
      sums = (checkpoint.read_json(os.path.join(step_dir, 'integrity', 'metadata'))['state']
              if os.path.isdir(os.path.join(step_dir, 'integrity')) else None)
      checkpoint.verify(state, sums, step_dir)
      return state
    except TrainingError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      problem = (str(e) if isinstance(e, checkpoint.CheckpointError) else
                 checkpoint.short_reason(e))
      if os.path.dirname(step_dir) != self.directory:
        self.notes.append(f'Skipping the damaged checkpoint {step_dir} ({problem}).')
      else:
        self._set_aside(int(os.path.basename(step_dir)), problem)
      return None

  def close(self):
    """Waits for a save in flight, then releases the manager."""
    self._guard(self.manager.wait_until_finished)
    self.manager.close()
    self._empty_trash()

  def __enter__(self):
    # Once per process, and kept: the leftovers of a failed write are reported late.
    if not getattr(sys.unraisablehook, 'quiet_closed_loop', False):
      sys.unraisablehook = _quiet_closed_loop_hook(sys.unraisablehook)
    for name in _LOGGERS:
      logging.getLogger(name).addFilter(_QUIET_ORBAX_FAILURES)  # adding twice keeps one
    return self

  def __exit__(self, *exc):
    if exc[0] is None:
      self.close()
    else:  # already failing: finish quietly, the first error is the one to show
      try:
        self.manager.wait_until_finished()
        self.manager.close()
      except Exception:  # pylint: disable=broad-except
        pass
