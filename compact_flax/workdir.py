"""What a run writes beside its checkpoints: the workdir lock, config.json, metrics.jsonl and
TensorBoard events. Process 0 writes; every write failure is one line that names the workdir.

The lock is `fcntl.flock` on `WORKDIR/.lock`: the kernel drops it when the holding process ends,
however it ends (kill -9 included), so there is never a stale lock to clear. On a network file
system the lock holds where the server supports POSIX locks (NFSv4 does). Object-store URLs
(gs://, s3://) are refused: mount the bucket instead, knowing that such mounts may not honour
locks, so two runs there are not stopped.
"""

import errno
import fcntl
import json
import os
import socket
import time
from typing import Any, Dict

import jax
from jax.experimental import multihost_utils

from compact_flax.errors import TrainingError

LOCK_FILE = '.lock'


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without PyTorch: tensorboardX imports torch whenever it
  is installed (seconds of start-up), only to accept its tensors; scalars need none of it."""
  import sys  # pylint: disable=g-import-not-at-top
  if 'torch' in sys.modules or 'tensorboardX' in sys.modules:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    return SummaryWriter
  sys.modules['torch'] = None  # `import torch` raises ImportError meanwhile
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  finally:
    del sys.modules['torch']
  return SummaryWriter


def describe_os_error(e: OSError, what: str) -> str:
  """One line for a failed write: the full disk and a read-only place said plainly."""
  if e.errno == errno.ENOSPC:
    return (f'No space left on the device while writing {what}: free some space, or use a '
            '--workdir on another disk.')
  if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
    return f'Cannot write {what} ({e.strerror}): use a --workdir you can write to.'
  return f'Cannot write {what} ({e.strerror or e}).'


def check_path(workdir: str):
  if '://' in workdir:
    raise TrainingError(f'--workdir {workdir}: object-store URLs are not supported; use a local or '
                        'network file-system path (or a mounted bucket).')


class WorkdirLock:
  """One run per workdir: process 0 holds an exclusive lock for the whole run; every process
  learns whether it got it, so all of them stop together when it did not."""

  def __init__(self, workdir: str):
    self.workdir, self.path, self.file = workdir, os.path.join(workdir, LOCK_FILE), None

  def _acquire(self) -> str:
    """'' when locked, else why not."""
    try:
      os.makedirs(self.workdir, exist_ok=True)
      self.file = open(self.path, 'a+')
    except OSError as e:
      return describe_os_error(e, f'to {self.workdir}')
    try:
      fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      self.file.seek(0)
      holder = self.file.read().strip() or 'another process'
      self.file.close()
      self.file = None
      return (f'{self.workdir} is in use by another run ({holder}); wait for it to end, stop it, '
              'or use another --workdir.')
    self.file.seek(0)
    self.file.truncate()
    self.file.write(f'pid {os.getpid()} on {socket.gethostname()}, since '
                    f'{time.strftime("%Y-%m-%d %H:%M:%S")}\n')
    self.file.flush()
    return ''

  def __enter__(self):
    problem = self._acquire() if jax.process_index() == 0 else ''
    if jax.process_count() > 1:
      failed = multihost_utils.broadcast_one_to_all(int(bool(problem)))
      problem = problem or (f'process 0 could not lock {self.workdir}' if failed else '')
    if problem:
      raise TrainingError(problem)
    return self

  def __exit__(self, *exc):
    if self.file is not None:
      self.file.close()  # closing the file releases the lock
      self.file = None


def write_config(config, workdir: str):
  """The resolved config, as `WORKDIR/config.json` (process 0)."""
  if jax.process_index() != 0:
    return
  try:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      json.dump(config.to_dict(), f, indent=2, sort_keys=True)
  except OSError as e:
    raise TrainingError(describe_os_error(e, f'{workdir}/config.json')) from None


class MetricsWriter:
  """metrics.jsonl (one object per evaluation) and TensorBoard events, from process 0 only.

  Resuming at `start_step` drops the rows of later steps that the run is about to redo, so every
  step has one row, in metrics.jsonl and in TensorBoard alike.
  """

  def __init__(self, workdir: str, start_step: int = 0):
    self.enabled = jax.process_index() == 0
    if not self.enabled:
      return
    self.path = os.path.join(workdir, 'metrics.jsonl')
    try:
      if start_step and os.path.exists(self.path):
        self._truncate(start_step)
      self.tb = _summary_writer_class()(workdir, purge_step=start_step + 1 if start_step else None)
    except OSError as e:
      raise TrainingError(describe_os_error(e, f'{workdir}/metrics.jsonl')) from None

  def _truncate(self, start_step: int):
    """Keeps the rows of steps up to `start_step` (and drops a half-written last line)."""
    kept = []
    with open(self.path) as f:
      for line in f:
        try:
          if json.loads(line)['step'] <= start_step:
            kept.append(line if line.endswith('\n') else line + '\n')
        except (ValueError, KeyError, TypeError):
          continue
    with open(self.path + '.tmp', 'w') as f:
      f.writelines(kept)
    os.replace(self.path + '.tmp', self.path)

  def write(self, record: Dict[str, Any]):
    if not self.enabled:
      return
    try:
      with open(self.path, 'a') as f:
        f.write(json.dumps(record) + '\n')
      for k, v in record.items():
        if k != 'step' and isinstance(v, (int, float)):
          self.tb.add_scalar(k, v, record['step'])
      self.tb.flush()
    except OSError as e:
      raise TrainingError(describe_os_error(e, self.path)) from None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    if self.enabled:
      self.tb.close()
