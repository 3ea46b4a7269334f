"""The training job: config -> source -> model -> jitted steps over a mesh -> checkpoints, metrics.

`train_and_evaluate(config, workdir)` is the whole job, read top to bottom. Its pieces live by
concern: `validation` (config checks), `devices` (mesh, CPU split), `optim` (schedule, AdamW),
`steps` (state, train and eval steps, their jitted factories), `train_checkpoints` (Orbax),
`checkpoint` (the one weight loader), `workdir` (lock, config.json, metrics files),
`input_pipeline` (sources by name). Here: the loop, evaluation, progress and signals.
"""

import contextlib
import json
import os
import signal
import tempfile
import threading
import time
from typing import Any, Callable, Dict, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from compact_flax import checkpoint
from compact_flax import data as data_lib
from compact_flax import devices
from compact_flax import errors
from compact_flax import input_pipeline
from compact_flax import merge
from compact_flax import models
from compact_flax import optim
from compact_flax import precision
from compact_flax import steps
from compact_flax import train_checkpoints
from compact_flax import validation
from compact_flax import workdir as workdir_lib

TrainingError = errors.TrainingError


def _say(*args):
  if jax.process_index() == 0:
    print(*args, flush=True)


def _fmt_time(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


# --- Setting up --------------------------------------------------------------------------------

def check_config(config, num_devices: int):
  """Every config value, before anything starts: one error naming each problem."""
  problems = validation.problems(config, num_devices)
  if problems:
    raise TrainingError(' '.join(problems))


def get_source(config):
  try:
    return input_pipeline.get_source(config.dataset, config)
  except (ValueError, ImportError) as e:
    raise TrainingError(str(e)) from None


def build_model(config, source, platform: Optional[str] = None,
                compute_capability: Optional[str] = None):
  """The configured model for `source`'s class count (a text source also sets the vocabulary size
  and length) in the compute dtype for `platform` (default: JAX's first device;
  `precision.resolve`); checks the input shape fits."""
  kwargs = validation.model_kwargs(config)
  kwargs.setdefault('num_classes', source.num_classes)
  for k, v in getattr(source, 'model_kwargs', {}).items():
    kwargs.setdefault(k, v)
  try:
    model = models.create_model(
        config.model, dtype=precision.compute_dtype(config.dtype, platform, compute_capability),
        **kwargs)
  except (ValueError, TypeError) as e:
    raise TrainingError(str(e)) from None
  is_text, text_source = hasattr(model, 'seq_len'), 'text' in source.normalization
  if is_text != text_source:
    raise TrainingError(f'{config.model} is a {"text" if is_text else "vision"} model but '
                        f'{source.name} holds {"texts" if text_source else "images"}.')
  if not is_text and merge.image_shape(model) != tuple(source.image_shape):
    raise TrainingError(
        f'{config.model} takes images of shape {merge.image_shape(model)} but {source.name} has '
        f'{tuple(source.image_shape)}: set config.model_kwargs.img_size / n_input_channels.')
  if model.num_classes != source.num_classes:
    raise TrainingError(f'config asks for {model.num_classes} classes but {source.name} has '
                        f'{source.num_classes}.')
  return model, kwargs


def steps_per_epoch(config, source) -> int:
  n = source.num_train // config.batch_size
  if n == 0:
    raise TrainingError(f'batch_size {config.batch_size} exceeds the {source.num_train} '
                        'training images.')
  return n


def load_init_params(config, model):
  """Params from `config.init_from` (converted or trained), fitted by `checkpoint.load_model` to
  `model`'s resolution, class count and positional embedding, and checked against `model`."""
  fit = {'img_size': model.img_size} if hasattr(model, 'img_size') else {}
  try:
    _, variables = checkpoint.load_model(
        config.init_from, num_classes=model.num_classes,
        positional_embedding=model.positional_embedding, scan_layers=model.scan_layers,
        seed=config.seed, **fit)
    merge.check_fits(model, variables['params'],
                     hint=f'config.init_from does not hold a {config.model}')
  except (FileNotFoundError, ValueError) as e:
    raise TrainingError(f'config.init_from: {e}'.replace('\n', ' | ')) from None
  return variables['params']


def word_vector_params(config, model, vectors):
  """The model's init with the embedding table replaced by pretrained word vectors."""
  params = merge.init_variables(model, config.seed)['params']
  embedding = params['embedder']['embeddings']['embedding']
  if embedding.shape != vectors.shape:
    raise TrainingError(f'The word vectors are {vectors.shape} but the embedding is '
                        f'{embedding.shape}.')
  params['embedder']['embeddings']['embedding'] = jnp.asarray(vectors, embedding.dtype)
  return params


def restore_or_init(config, model, tx, mesh, checkpoints, state_spec,
                    source=None) -> steps.TrainState:
  """The workdir's newest intact state (`state_spec`: `steps.abstract_state`'s) if there is one,
  else step 0 (from `init_from` if set, or with the source's pretrained word vectors)."""
  state = checkpoints.restore_latest(state_spec)
  for note in checkpoints.notes:
    _say(f'warning: {note}')
  if state is not None:
    _say(f'Resuming from step {int(state.step)} in {os.path.dirname(checkpoints.directory)}.')
    return state
  params = load_init_params(config, model) if config.init_from else None
  vectors = getattr(source, 'word_vectors', None)
  if params is None and vectors is not None:
    params = word_vector_params(config, model, vectors)
  return steps.init_state(config, model, tx, mesh, params)


# --- Evaluation, progress, signals, metrics files ------------------------------------------------

def evaluate_params(eval_fn, params, source, batch_size, sharding) -> Dict[str, float]:
  """Mean loss, top-1 and top-5 of `params` over the source's eval split."""
  totals = None
  for batch in source.eval_batches(batch_size=batch_size, sharding=sharding):
    sums = eval_fn(params, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  n = max(float(totals['count']), 1.0)
  return {'eval_loss': float(totals['loss']) / n, 'eval_top1': float(totals['top1']) / n,
          'eval_top5': float(totals['top5']) / n}


class Evaluator:
  """Evaluates a train state (and its EMA) and appends the record to the metrics files."""

  def __init__(self, config, model, mesh, source, schedule, steps_per_epoch: int, writer):
    self.eval_fn = steps.make_eval_step(model, mesh)
    self.sharding = devices.batch_sharded(mesh)
    self.config, self.source, self.schedule, self.writer = config, source, schedule, writer
    self.steps_per_epoch, self.num_devices = steps_per_epoch, mesh.size

  def __call__(self, state, step: int, **extra) -> Dict[str, Any]:
    run = lambda params: evaluate_params(self.eval_fn, params, self.source,
                                         self.config.eval_batch_size, self.sharding)
    record = {'step': step, 'epoch': step / self.steps_per_epoch, **extra, **run(state.params)}
    if state.ema_params is not None:
      record.update({f'ema_{k}': v for k, v in run(state.ema_params).items()})
    record.update(num_devices=self.num_devices,
                  learning_rate=float(self.schedule(max(step - 1, 0))))
    self.writer.write(record)
    return record

  def once(self, state) -> Dict[str, Any]:
    """`config.eval_only`: the record, printed, with the eval images/s."""
    t0 = time.time()
    record = self(state, int(state.step))
    record['images_per_sec'] = self.source.num_eval / (time.time() - t0)
    _say(json.dumps(record))
    return record


class Progress:
  """Per-step losses stay on the device until a log point, where they are fetched, checked
  (a non-finite loss stops the run) and reported with the learning rate, images/s and ETA."""

  def __init__(self, config, steps_per_epoch: int, total_steps: int, schedule,
               last_saved: Callable[[], Optional[int]], workdir: str):
    self.config, self.schedule, self.workdir = config, schedule, workdir
    self.last_saved = last_saved
    self.steps_per_epoch, self.total_steps = steps_per_epoch, total_steps
    self.pending, self.losses = [], []
    self.t_last, self.images, self.rate = None, 0, None

  def add(self, loss, skipped=None):
    """A step's loss; `skipped` (float16 loss scaling): whether a non-finite one is a step the
    loss scale skipped (and will retry smaller) rather than a failure."""
    self.pending.append((loss, False if skipped is None else skipped))

  def report(self, done: int):
    values, skipped = (np.asarray(v) for v in zip(*jax.device_get(self.pending)))
    self.pending = []
    finite = np.isfinite(values)
    bad = np.flatnonzero(~finite & ~skipped)
    if bad.size:
      saved = self.last_saved()
      kept = (f'The last checkpoint (step {saved}) is kept in {self.workdir}/checkpoints.'
              if saved is not None else 'No checkpoint had been saved.')
      raise TrainingError(f'Loss is {values[bad[0]]} at step {done - len(values) + bad[0] + 1}; '
                          f'stopped. {kept} Lower the learning rate or set grad_clip_norm.')
    self.losses.extend(values[finite].tolist())
    now = time.time()
    if self.t_last is None:  # the first interval holds the compilation: not timed
      self.t_last, self.images = now, 0
    else:
      self.images += len(values) * self.config.batch_size
    self.rate = self.images / max(now - self.t_last, 1e-9) if self.images else None
    speed = (f'{self.rate:8.1f} img/s ETA '
             f'{_fmt_time((self.total_steps - done) * self.config.batch_size / self.rate)}'
             if self.rate else 'compiling/warming up')
    epochs = self.config.num_epochs + self.config.cooldown_epochs
    _say(f'epoch {done / self.steps_per_epoch:6.2f}/{epochs} step {done}/{self.total_steps} '
         f'loss {values[-1]:.4f} lr {float(self.schedule(done - 1)):.2e} {speed}')

  def take_train_loss(self) -> Optional[float]:
    """The mean loss since the last call."""
    mean = float(np.mean(self.losses)) if self.losses else None
    self.losses = []
    return mean


class PhaseTimes:
  """Wall-clock seconds of the training process by phase, reported at the end of a run and written
  to `WORKDIR/timing.json`: where a run's time goes (steps run asynchronously, so 'steps' is the
  time spent waiting for them; host work done meanwhile shows under its own phase)."""

  PHASES = ('start-up', 'compile', 'steps', 'input', 'eval', 'checkpoints')

  def __init__(self):
    self.seconds = dict.fromkeys(self.PHASES, 0.0)
    self.t0 = time.perf_counter()

  @contextlib.contextmanager
  def __call__(self, phase: str):
    t = time.perf_counter()
    try:
      yield
    finally:
      self.seconds[phase] += time.perf_counter() - t

  def report(self, workdir: str, source):
    record = {k: round(v, 2) for k, v in self.seconds.items()}
    host_augment = getattr(source, 'host_augment_seconds', 0.0)
    if host_augment:
      record['input_host_augment'] = round(host_augment, 2)
    record['total'] = round(time.perf_counter() - self.t0, 2)
    _say('Time by phase: ' + ', '.join(f'{k} {v:.1f} s' for k, v in record.items()))
    if jax.process_index() == 0:
      with open(os.path.join(workdir, 'timing.json'), 'w') as f:
        json.dump(record, f)
    return record


class StopSignal:
  """SIGTERM/SIGINT ask the run to stop cleanly (saving in the loop) instead of dying mid-write.

  `event` may be one that `train_main.py` set up before its imports, so that a signal in the first
  seconds is not lost.
  """

  def __init__(self, event: Optional[threading.Event] = None):
    self.event, self.previous = event or threading.Event(), {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self.previous[sig] = signal.signal(sig, lambda *_: self.event.set())
    return self

  def __exit__(self, *exc):
    for sig, handler in self.previous.items():
      signal.signal(sig, handler)

  def requested(self, sync_point: bool) -> bool:
    """One process: whether a signal came. Several: at sync points (steps every process
    reaches together), whether any process got one, so that all stop at the same step."""
    if jax.process_count() == 1:
      return self.event.is_set()
    return sync_point and bool(
        multihost_utils.process_allgather(np.int32(self.event.is_set())).any())


class Profile:
  """`config.profile_steps='START:STOP'`: a `jax.profiler` trace of steps START to STOP - 1 under
  `WORKDIR/profile/` (TensorBoard's profile plugin and XProf read its `*.xplane.pb` files)."""

  def __init__(self, spec: str, workdir: str):
    self.start, self.stop = (int(x) for x in spec.split(':')) if spec else (None, None)
    self.directory, self.active = os.path.join(workdir, 'profile'), False

  def before(self, step: int):
    if self.start is not None and not self.active and self.start <= step < self.stop:
      jax.profiler.start_trace(self.directory)
      self.active = True

  def after(self, done: int, state):
    if self.active and done >= self.stop:
      self.close(state)

  def close(self, state=None):
    if self.active:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self.active = False
      _say(f'Profile of steps {self.start}-{self.stop - 1} written under {self.directory}.')


@contextlib.contextmanager
def joined_on_exit():
  """A list for background compilation threads, each joined before the block is left, however it
  is left: a process that exits while XLA compiles in a daemon thread aborts."""
  threads = []
  try:
    yield threads
  finally:
    for thread in threads:
      if thread is not None:
        thread.join()


# --- The job -----------------------------------------------------------------------------------

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       stop_event: Optional[threading.Event] = None) -> Dict[str, Any]:
  """Trains (or with `config.eval_only`, evaluates) and returns the last metrics record."""
  times = PhaseTimes()
  mesh = devices.make_mesh()
  check_config(config, mesh.size)
  workdir_lib.check_path(workdir)
  with StopSignal(stop_event) as stop, workdir_lib.WorkdirLock(workdir), \
      joined_on_exit() as compiling:
    source = get_source(config)
    if not config.eval_only and hasattr(source, 'warm_up'):
      # beside the start-up and the train step's compilation
      compiling.append(source.warm_up(config.batch_size))
    model, model_kwargs = build_model(config, source)
    if config.dtype == 'auto':
      _say("config.dtype 'auto': {} compute for {}.".format(*precision.auto()))
    epoch_steps = steps_per_epoch(config, source)
    total_steps = (config.num_epochs + config.cooldown_epochs) * epoch_steps
    schedule = optim.create_learning_rate_schedule(config, epoch_steps)
    tx = optim.create_optimizer(config, schedule)
    workdir_lib.write_config(config, workdir)
    spec = checkpoint.model_spec(config.model, model_kwargs, data={
        'dataset': source.name, 'class_names': list(source.class_names), **source.normalization})
    checkpoints = train_checkpoints.TrainCheckpoints(
        workdir, spec, keep=config.keep_checkpoints, async_save=config.checkpoint_async)
    with checkpoints:
      state_spec = steps.abstract_state(config, model, tx, mesh)
      train_step = step_compiling = None
      if not config.eval_only:
        train_step = steps.make_train_step(config, model, tx, mesh, steps_per_epoch=epoch_steps,
                                           device_augment=source.device_augment)
        batch_spec = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=devices.batch_sharded(mesh)),
            source.train_batch_spec(config.batch_size))
        # The step compiles beside the initialisation (or restore) below.
        step_compiling = steps.compile_ahead(train_step, state_spec, batch_spec,
                                             jax.random.key(config.seed))
        compiling.append(step_compiling)
      state = restore_or_init(config, model, tx, mesh, checkpoints, state_spec, source)
      with workdir_lib.MetricsWriter(workdir, int(state.step)) as writer:
        evaluate = Evaluator(config, model, mesh, source, schedule, epoch_steps, writer)
        _say(f'{config.model}: {sum(x.size for x in jax.tree.leaves(state.params)):,} parameters; '
             f'{jnp.dtype(model.dtype or jnp.float32).name} compute; '
             f'{source.name}: {source.num_train} train / {source.num_eval} eval images; '
             f'{mesh.size} device(s) on {jax.process_count()} process(es); {epoch_steps} '
             f'steps/epoch, {total_steps} steps; config in {workdir}/config.json.')
        if config.eval_only:
          return evaluate.once(state)
        if stop.requested(sync_point=True):  # every process decides together
          _say('Stopped by signal before the first step; nothing new to save.')
          return {}
        times.seconds['start-up'] = time.perf_counter() - times.t0
        record = train_loop(config, state, train_step, source, mesh, evaluate, checkpoints, stop,
                            Progress(config, epoch_steps, total_steps, schedule,
                                     checkpoints.latest_step, workdir), times,
                            step_compiling)
      closing = time.perf_counter()  # leaving `checkpoints` waits for the last saves
    times.seconds['checkpoints'] += time.perf_counter() - closing
    times.report(workdir, source)
    return record


def train_loop(config, state, train_step, source, mesh, evaluate, checkpoints, stop,
               progress, times: Optional[PhaseTimes] = None,
               compiling: Optional[threading.Thread] = None) -> Dict[str, Any]:
  """Steps from `state.step` to the end: reports, evaluations, checkpoints, a clean stop.
  `compiling`: `steps.compile_ahead`'s thread, joined before the first step."""
  times = times or PhaseTimes()
  rng, start, t_start, record = jax.random.key(config.seed), int(state.step), time.time(), {}
  epoch_steps, total_steps = progress.steps_per_epoch, progress.total_steps
  profile = Profile(config.get('profile_steps', ''), progress.workdir)
  with data_lib.prefetch(source.train_batches(
      start, batch_size=config.batch_size, seed=config.seed,
      sharding=devices.batch_sharded(mesh))) as batches, contextlib.ExitStack() as closing:
    closing.callback(lambda: profile.close(state))
    for step in range(start, total_steps):
      profile.before(step)
      with times('input'):
        batch = next(batches)
      with times('compile' if step == start else 'steps'):
        if step == start and compiling is not None:
          compiling.join()
        state, metrics = train_step(state, batch, rng)
        if step == start:  # the first call compiles (or waits for it); its step is counted with it
          jax.block_until_ready(metrics['loss'])
      progress.add(metrics['loss'], metrics.get('skipped'))
      done = step + 1
      profile.after(done, state)
      epoch_end, final = done % epoch_steps == 0, done == total_steps
      sync_point = done % config.log_every_steps == 0 or epoch_end or final
      save = done % config.checkpoint_every_steps == 0 or epoch_end or final
      if sync_point or save or stop.event.is_set():
        with times('steps'):  # waits for the steps dispatched since the last report
          progress.report(done)
      evaluated = epoch_end and (done // epoch_steps % config.eval_every_epochs == 0 or final)
      if evaluated:
        with times('eval'):
          record = evaluate(state, done, train_loss=progress.take_train_loss(),
                            images_per_sec=progress.rate)
        _say('  ' + ', '.join(f'{k} {v:.4f}' for k, v in record.items()
                              if k.startswith(('eval', 'ema')) and v is not None))
      if save:
        with times('checkpoints'):
          checkpoints.save(state, done, metrics=record if evaluated else None)
      if stop.requested(sync_point):
        checkpoints.save(state, done)
        _say(f'Stopped by signal at step {done}; checkpoint saved. Relaunch with the same '
             '--workdir to resume.')
        return record
  _say(f'Done: {total_steps} steps in {_fmt_time(time.time() - t_start)}.')
  return record


def evaluate_checkpoint(config: ml_collections.ConfigDict, checkpoint_dir: str,
                        workdir: Optional[str] = None) -> Dict[str, Any]:
  """Top-1, top-5, loss and images/s of `checkpoint_dir` on the config's eval split and
  transform."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.init_from, config.eval_only = checkpoint_dir, True
  with tempfile.TemporaryDirectory() as tmp:
    return train_and_evaluate(config, workdir or tmp)
