"""Training and evaluation: one jitted step over a device mesh, Orbax checkpoints, metrics.

`train_and_evaluate(config, workdir)` is the whole job; `create_learning_rate_schedule`,
`create_optimizer`, `create_train_state`, `train_step` and `eval_step` are importable pieces.
The same program runs on one CPU, eight GPUs or a TPU pod: parameters are replicated, the batch is
sharded on the mesh's 'data' axis, and each process feeds its own rows.
"""

import functools
import importlib.metadata
import json
import logging
import os
import signal
import threading
import time
from typing import Any, Dict, Optional

import flax
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from compact_flax import augment
from compact_flax import checkpoint as ckpt_lib
from compact_flax import data as data_lib
from compact_flax import merge
from compact_flax import models

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
  """A problem the user must fix (bad config, bad checkpoint, diverged run); one line each."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any = None


# --- CPU devices -----------------------------------------------------------------------------

IMAGES_PER_CPU_DEVICE = 8  # measured on 2 cores: benchmarks/RESULTS.md
CPU_DEVICES_PER_CORE = 8


def cpu_device_count(batch_size: int, eval_batch_size: int, cores: int) -> int:
  """The most XLA CPU devices of at least 8 images each (and at most 8 per core) that divide both
  batch sizes.

  On CPU, data parallelism over many small devices keeps the cores busy and each device's
  activations in cache. On 2 cores: CCT-2/3x2 at 32x32 and batch 128 trains about 1.5x faster on
  16 devices than on one, and slower on 32 or 64. It does not pay for tiny inputs (8x8 digits:
  slower) and wants fewer images per device at 224x224 (benchmarks/RESULTS.md).
  """
  target = max(1, min(batch_size // IMAGES_PER_CPU_DEVICE, CPU_DEVICES_PER_CORE * cores))
  return max(d for d in range(1, target + 1) if batch_size % d == 0 and eval_batch_size % d == 0)


def _accelerator_plugin_installed() -> bool:
  names = {(d.metadata['Name'] or '').lower().replace('_', '-')
           for d in importlib.metadata.distributions()}
  return any(n.startswith(('jax-cuda', 'jax-rocm', 'libtpu')) for n in names)


def set_cpu_devices(count: int, batch_size: int, eval_batch_size: Optional[int] = None) -> int:
  """Splits the CPU into `count` XLA devices before JAX starts; -1: `cpu_device_count`.

  -1 applies only where no GPU/TPU plugin is installed (or JAX_PLATFORMS=cpu); accelerator
  backends are never affected. Returns the count set; 0 when `count` is 0, when the user chose
  through JAX_NUM_CPU_DEVICES or XLA_FLAGS, or when JAX has already started.
  """
  if not count or os.environ.get('JAX_NUM_CPU_DEVICES') or (
      'host_platform_device_count' in os.environ.get('XLA_FLAGS', '')):
    return 0
  if count < 0:
    if os.environ.get('JAX_PLATFORMS') != 'cpu' and _accelerator_plugin_installed():
      return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    count = cpu_device_count(batch_size, eval_batch_size or batch_size, cores or 1)
  try:
    jax.config.update('jax_num_cpu_devices', count)
  except RuntimeError:  # backends already initialised
    return 0
  return count


# --- Schedule and optimizer ------------------------------------------------------------------

def create_learning_rate_schedule(config, steps_per_epoch: int):
  """timm's cosine schedule, per step: linear warmup from `warmup_lr`, cosine over `num_epochs`
  (warmup included, as timm counts it) down to `min_lr`, then `min_lr` through the cooldown."""
  warmup = config.warmup_epochs * steps_per_epoch
  total = config.num_epochs * steps_per_epoch
  lr, warmup_lr, min_lr = config.learning_rate, config.warmup_lr, config.min_lr

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = warmup_lr + (lr - warmup_lr) * step / max(warmup, 1)
    cos = min_lr + 0.5 * (lr - min_lr) * (1 + jnp.cos(jnp.pi * jnp.minimum(step, total) / total))
    return jnp.where(step < warmup, warm, jnp.where(step < total, cos, min_lr))

  return schedule


def weight_decay_mask(params):
  """timm's rule: no weight decay on biases and 1-D parameters (norms); the PE is decayed."""
  flat = flax.traverse_util.flatten_dict(params)
  return flax.traverse_util.unflatten_dict(
      {k: v.ndim > 1 and k[-1] != 'bias' for k, v in flat.items()})


def create_optimizer(config, schedule) -> optax.GradientTransformation:
  parts = []
  if config.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  parts.append(optax.adamw(schedule, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps,
                           weight_decay=config.weight_decay, mask=weight_decay_mask))
  return optax.chain(*parts)


# --- State and steps ---------------------------------------------------------------------------

def create_train_state(config, model, tx, params=None) -> TrainState:
  if params is None:
    params = merge.init_variables(model, config.seed)['params']
  ema = jax.tree.map(jnp.copy, params) if config.ema_decay else None
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    ema_params=ema)


def cross_entropy(logits, labels, num_classes: int, label_smoothing: float = 0.0):
  """Per-example softmax cross-entropy with smoothed one-hot targets, in float32."""
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def train_step(state: TrainState, batch, rng, *, model, tx, config, augment_on_device=False,
               crop_on_device=False, mixup_until_step=None):
  """One optimizer step on a global batch: (state, batch, rng) -> (state, metrics).

  On the device, in this order: the per-image recipe (when `augment_on_device`), Mixup/CutMix with
  label smoothing (until `mixup_until_step`; None: always), forward, backward, AdamW.
  """
  rng = jax.random.fold_in(rng, state.step)
  k_drop, k_aug, k_mix = jax.random.split(rng, 3)
  aug = config.get('aug') or {}
  images = batch['image']
  if augment_on_device:
    images = augment.train_transform(images, k_aug, aug, crop=crop_on_device)
  enabled = True if mixup_until_step is None else state.step < mixup_until_step
  images, targets = augment.mixup_cutmix(
      images.astype(jnp.float32), batch['label'], k_mix, num_classes=model.num_classes,
      smoothing=config.label_smoothing, mixup_alpha=aug.get('mixup', 0.),
      cutmix_alpha=aug.get('cutmix', 0.), prob=aug.get('mixup_prob', 1.),
      switch_prob=aug.get('mixup_switch_prob', .5), enabled=enabled)

  def loss_fn(params, images, targets, key):
    logits = model.apply({'params': params}, images, train=True, rngs={'dropout': key})
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean()

  grad_fn = jax.value_and_grad(loss_fn)
  k = config.grad_accum_steps
  if k > 1:  # micro-batches of rows j, j+k, ...: each stays on the device that holds it
    micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape((-1, k) + x.shape[1:]), 0, 1),
                         (images, targets))

    def accumulate(carry, inputs):
      i, (mb_images, mb_targets) = inputs
      loss, grads = grad_fn(state.params, mb_images, mb_targets, jax.random.fold_in(k_drop, i))
      return jax.tree.map(jnp.add, carry, (loss, grads)), None

    zero = (jnp.zeros(()), jax.tree.map(jnp.zeros_like, state.params))
    # Unrolled: XLA's CPU backend runs convolutions inside a while loop with a naive kernel
    # (CCT-2 on 2 cores, 16 micro-batches of 8: 55 vs 654 img/s, benchmarks/RESULTS.md).
    (loss, grads), _ = jax.lax.scan(accumulate, zero, (jnp.arange(k), micro), unroll=True)
    loss, grads = jax.tree.map(lambda x: x / k, (loss, grads))
  else:
    loss, grads = grad_fn(state.params, images, targets, k_drop)

  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = state.ema_params
  if ema is not None:
    ema = optax.incremental_update(params, ema, 1.0 - config.ema_decay)
  metrics = {'loss': loss, 'grad_norm': optax.tree.norm(grads)}
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                       ema_params=ema), metrics


def eval_step(params, batch, *, model):
  """Sums over the real (unmasked) rows: loss, top-1 and top-5 hits, count."""
  logits = model.apply({'params': params}, batch['image'], train=False).astype(jnp.float32)
  mask = batch['mask'].astype(jnp.float32)
  loss = cross_entropy(logits, batch['label'], model.num_classes)
  topk = jax.lax.top_k(logits, min(5, model.num_classes))[1]
  hits = topk == batch['label'][:, None]
  return {'loss': (loss * mask).sum(), 'top1': (hits[:, 0] * mask).sum(),
          'top5': (hits.any(-1) * mask).sum(), 'count': mask.sum()}


def evaluate(eval_fn, params, source, batch_size, sharding) -> Dict[str, float]:
  totals = None
  for batch in source.eval_batches(batch_size=batch_size, sharding=sharding):
    sums = eval_fn(params, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  n = max(float(totals['count']), 1.0)
  return {'eval_loss': float(totals['loss']) / n, 'eval_top1': float(totals['top1']) / n,
          'eval_top5': float(totals['top5']) / n}


# --- The job -------------------------------------------------------------------------------------

REQUIRED_FIELDS = ('model', 'model_kwargs', 'dataset', 'num_epochs', 'batch_size', 'seed',
                   'learning_rate', 'weight_decay', 'warmup_epochs', 'warmup_lr', 'min_lr',
                   'cooldown_epochs', 'init_from', 'eval_only')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def _say(*args):
  if jax.process_index() == 0:
    print(*args, flush=True)


def _fmt_time(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


def build_model(config, source):
  """The configured model for `source`'s class count; checks the image shape fits."""
  if config.dtype not in DTYPES:
    raise TrainingError(f"Unknown dtype '{config.dtype}'; expected one of {sorted(DTYPES)}.")
  kwargs = dict(config.model_kwargs)
  kwargs.setdefault('num_classes', source.num_classes)
  try:
    model = models.create_model(config.model, dtype=DTYPES[config.dtype], **kwargs)
  except (ValueError, TypeError) as e:
    raise TrainingError(str(e)) from None
  if merge.image_shape(model) != tuple(source.image_shape):
    raise TrainingError(
        f'{config.model} takes images of shape {merge.image_shape(model)} but {source.name} has '
        f'{tuple(source.image_shape)}: set config.model_kwargs.img_size / n_input_channels.')
  if model.num_classes != source.num_classes:
    raise TrainingError(f'config asks for {model.num_classes} classes but {source.name} has '
                        f'{source.num_classes}.')
  return model, kwargs


class _Checkpoints:
  """Two Orbax managers under WORKDIR/checkpoints: `last` (every N steps and each epoch end,
  keeping K) and `best` (the best eval top-1). Items: `state` and `model` (the JSON spec)."""

  def __init__(self, workdir, config, spec):
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    self.ocp, self.spec = ocp, spec
    root = os.path.join(os.path.abspath(workdir), 'checkpoints')
    handlers = dict(state=ocp.StandardCheckpointHandler(), model=ocp.JsonCheckpointHandler())
    self.last = ocp.CheckpointManager(
        os.path.join(root, 'last'), item_handlers=handlers,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=config.keep_checkpoints, create=True,
            enable_async_checkpointing=config.get('checkpoint_async', True)))
    self.best = ocp.CheckpointManager(
        os.path.join(root, 'best'), item_handlers=dict(handlers),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True, best_fn=lambda m: m['eval_top1'], best_mode='max',
            enable_async_checkpointing=config.get('checkpoint_async', True)))
    self.best_top1 = -1.0
    if self.best.latest_step() is not None:
      stored = self.best.restore(self.best.latest_step(), args=ocp.args.Composite(
          model=ocp.args.JsonRestore()))['model']
      self.best_top1 = stored.get('metrics', {}).get('eval_top1', -1.0)

  def _args(self, state, metrics=None):
    spec = self.spec if metrics is None else {**self.spec, 'metrics': metrics}
    return self.ocp.args.Composite(state=self.ocp.args.StandardSave(state),
                                   model=self.ocp.args.JsonSave(spec))

  # One asynchronous save in flight at a time: two managers finalising at once across
  # processes trip Orbax's cross-process metadata check.
  def save(self, state, step: int):
    if self.last.latest_step() != step:
      self.best.wait_until_finished()
      self.last.save(step, args=self._args(state))

  def save_if_best(self, state, step: int, metrics):
    if metrics['eval_top1'] > self.best_top1:
      self.best_top1 = metrics['eval_top1']
      self.last.wait_until_finished()
      self.best.save(step, args=self._args(state, metrics), metrics=metrics)

  def restore_latest(self, abstract_state):
    step = self.last.latest_step()
    if step is None:
      return None
    where = os.path.join(self.last.directory, str(step))
    try:
      stored = self.last.restore(step, args=self.ocp.args.Composite(
          model=self.ocp.args.JsonRestore()))['model']
    except Exception as e:  # pylint: disable=broad-except
      raise TrainingError(f'Cannot read the checkpoint at {where} ({type(e).__name__}: {e}); move '
                          'it away to resume from the one before, or use a new --workdir.') from None
    ignore = lambda s: (s['model'], {k: v for k, v in s['model_kwargs'].items() if k != 'dtype'})
    if ignore(stored) != ignore(self.spec):
      raise TrainingError(f'The workdir holds a checkpoint of {ignore(stored)} but the config '
                          f'builds {ignore(self.spec)}: use a new --workdir, or the config it was '
                          'trained with.')
    try:
      return self.last.restore(step, args=self.ocp.args.Composite(
          state=self.ocp.args.StandardRestore(abstract_state)))['state']
    except Exception as e:  # pylint: disable=broad-except
      raise TrainingError(f'Cannot restore the checkpoint at {where} ({type(e).__name__}: '
                          f'{str(e).splitlines()[0][:200]}); move it away or use a new '
                          '--workdir.') from None

  def close(self):
    for m in (self.last, self.best):
      m.wait_until_finished()
      m.close()


class _StopSignal:
  """SIGTERM/SIGINT ask the loop to save and exit cleanly instead of dying mid-write."""

  def __init__(self):
    self.event, self.previous = threading.Event(), {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self.previous[sig] = signal.signal(sig, lambda *_: self.event.set())
    return self

  def __exit__(self, *exc):
    for sig, handler in self.previous.items():
      signal.signal(sig, handler)

  def requested(self, sync: bool) -> bool:
    if jax.process_count() > 1 and sync:  # every process must stop at the same step
      return bool(multihost_utils.process_allgather(np.int32(self.event.is_set())).any())
    return self.event.is_set() and jax.process_count() == 1


class _MetricsWriter:
  """metrics.jsonl (one object per evaluation) and TensorBoard events, from process 0 only."""

  def __init__(self, workdir):
    self.enabled = jax.process_index() == 0
    if self.enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self.path = os.path.join(workdir, 'metrics.jsonl')
      self.tb = SummaryWriter(workdir)

  def write(self, record: Dict[str, Any]):
    if not self.enabled:
      return
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    for k, v in record.items():
      if k != 'step' and isinstance(v, (int, float)):
        self.tb.add_scalar(k, v, record['step'])
    self.tb.flush()

  def close(self):
    if self.enabled:
      self.tb.close()


def _load_init_params(config, model):
  """Params from `config.init_from` (converted or trained checkpoint), fitted to `model`."""
  try:
    spec, params = ckpt_lib.load_params(config.init_from)
  except (FileNotFoundError, ValueError) as e:
    raise TrainingError(f'config.init_from: {e}') from None
  try:
    return merge.fit_params(model, params, seed=config.seed,
                            hint=f'init_from holds {spec["model"]}')['params']
  except merge.CheckpointError as e:
    raise TrainingError(str(e).replace('\n', ' | ')) from None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Trains (or with `config.eval_only`, evaluates) and returns the last metrics record."""
  missing = [f for f in REQUIRED_FIELDS if f not in config]
  if missing:
    raise TrainingError(f'config lacks {missing}; start from configs/common.py.')
  os.makedirs(workdir, exist_ok=True)
  devices = jax.devices()
  n_dev = len(devices)
  if config.batch_size % (n_dev * config.grad_accum_steps):
    raise TrainingError(f'batch_size {config.batch_size} does not divide over {n_dev} devices x '
                        f'{config.grad_accum_steps} accumulation steps: make it a multiple of '
                        f'{n_dev * config.grad_accum_steps}.')
  if config.eval_batch_size % n_dev:
    raise TrainingError(f'eval_batch_size {config.eval_batch_size} does not divide over {n_dev} '
                        'devices.')
  aug = config.get('aug') or {}
  if aug.get('mixup_mode', 'batch') != 'batch':
    raise TrainingError(f"aug.mixup_mode '{aug.mixup_mode}' is not implemented; the official "
                        "recipes use 'batch'.")
  try:
    source = data_lib.get_source(config.dataset, config)
  except (ValueError, ImportError) as e:
    raise TrainingError(str(e)) from None
  model, model_kwargs = build_model(config, source)
  spec = ckpt_lib.model_spec(config.model, model_kwargs, data={
      'dataset': source.name, 'class_names': list(source.class_names),
      **getattr(source, 'normalization', {})})

  mesh = Mesh(np.asarray(devices), ('data',))
  replicated, batch_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  steps_per_epoch = source.num_train // config.batch_size
  if steps_per_epoch == 0:
    raise TrainingError(f'batch_size {config.batch_size} exceeds the {source.num_train} '
                        'training images.')
  total_steps = (config.num_epochs + config.cooldown_epochs) * steps_per_epoch
  schedule = create_learning_rate_schedule(config, steps_per_epoch)
  tx = create_optimizer(config, schedule)

  init = functools.partial(create_train_state, config, model, tx)
  abstract = jax.eval_shape(init)
  state_sharding = jax.tree.map(lambda _: replicated, abstract)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, state_sharding)
  checkpoints = _Checkpoints(workdir, config, spec)
  state = checkpoints.restore_latest(abstract)
  if state is not None:
    _say(f'Resuming from step {int(state.step)} in {workdir}.')
  else:
    params = _load_init_params(config, model) if config.init_from else None
    state = jax.jit(lambda p: init(p), out_shardings=state_sharding)(params)

  eval_fn = jax.jit(functools.partial(eval_step, model=model),
                    in_shardings=(replicated, batch_sharding), out_shardings=replicated)
  writer = _MetricsWriter(workdir)
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  _say(f'{config.model}: {n_params:,} parameters; {source.name}: {source.num_train} train / '
       f'{source.num_eval} eval images; {n_dev} device(s) on {jax.process_count()} process(es); '
       f'{steps_per_epoch} steps/epoch, {total_steps} steps.')

  def run_eval(step, extra):
    record = {'step': step, 'epoch': step / steps_per_epoch, **extra}
    record.update(evaluate(eval_fn, state.params, source, config.eval_batch_size, batch_sharding))
    if state.ema_params is not None:
      ema = evaluate(eval_fn, state.ema_params, source, config.eval_batch_size, batch_sharding)
      record.update({f'ema_{k}': v for k, v in ema.items()})
    record.update(num_devices=n_dev, learning_rate=float(schedule(max(step - 1, 0))))
    writer.write(record)
    return record

  if config.eval_only:
    t0 = time.time()
    record = run_eval(int(state.step), {})
    record['images_per_sec'] = source.num_eval / (time.time() - t0)
    _say(json.dumps(record))
    writer.close()
    checkpoints.close()
    return record

  mixup_off = aug.get('mixup_off_epoch', 0)  # timm: 0 means never off
  step_fn = jax.jit(functools.partial(
      train_step, model=model, tx=tx, config=config,
      augment_on_device=getattr(source, 'device_transform', False),
      crop_on_device=getattr(source, 'crop_on_device', False),
      mixup_until_step=mixup_off * steps_per_epoch if mixup_off else None),
                    in_shardings=(state_sharding, batch_sharding, replicated),
                    out_shardings=(state_sharding, replicated), donate_argnums=0)
  rng = jax.random.key(config.seed)
  start = int(state.step)
  batches = data_lib.prefetch(source.train_batches(
      start, batch_size=config.batch_size, seed=config.seed, sharding=batch_sharding))
  record: Dict[str, Any] = {}
  pending, losses, last_saved = [], [], start
  t_start, t_last, images_since = time.time(), None, 0
  with _StopSignal() as stop:
    for step in range(start, total_steps):
      state, metrics = step_fn(state, next(batches), rng)
      pending.append(metrics['loss'])
      done = step + 1
      epoch_end, final = done % steps_per_epoch == 0, done == total_steps
      flush = done % config.log_every_steps == 0 or epoch_end or final or stop.event.is_set()
      if flush or done % config.checkpoint_every_steps == 0:
        values = np.asarray(jax.device_get(pending))
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
          checkpoints.close()
          raise TrainingError(
              f'Loss is {values[bad[0]]} at step {done - len(values) + bad[0] + 1}; stopped. The '
              f'last good checkpoint (step {last_saved}) is kept in {workdir}/checkpoints/last. '
              'Lower the learning rate or set grad_clip_norm.')
        losses.extend(values.tolist())
        now = time.time()
        if t_last is None:  # the first interval holds the compilation: not timed
          t_last, images_since = now, 0
        else:
          images_since += len(values) * config.batch_size
        rate = images_since / max(now - t_last, 1e-9) if images_since else None
        pending = []
        speed = (f'{rate:8.1f} img/s ETA '
                 f'{_fmt_time((total_steps - done) * config.batch_size / rate)}' if rate else
                 'compiling/warming up')
        _say(f'epoch {done / steps_per_epoch:6.2f}/{config.num_epochs + config.cooldown_epochs} '
             f'step {done}/{total_steps} loss {values[-1]:.4f} lr {float(schedule(step)):.2e} '
             f'{speed}')
      if epoch_end and ((done // steps_per_epoch) % config.eval_every_epochs == 0 or final):
        record = run_eval(done, {'train_loss': float(np.mean(losses)) if losses else None,
                                 'images_per_sec': rate})
        losses = []
        _say('  ' + ', '.join(f'{k} {v:.4f}' for k, v in record.items()
                              if k.startswith(('eval', 'ema')) and v is not None))
        checkpoints.save_if_best(state, done, record)
      if done % config.checkpoint_every_steps == 0 or epoch_end or final:
        checkpoints.save(state, done)
        last_saved = done
      if flush and stop.requested(sync=True):
        checkpoints.save(state, done)
        checkpoints.close()
        _say(f'Stopped by signal at step {done}; checkpoint saved. Relaunch with the same '
             '--workdir to resume.')
        writer.close()
        return record
  checkpoints.close()
  writer.close()
  _say(f'Done: {total_steps} steps in {_fmt_time(time.time() - t_start)}.')
  return record


def evaluate_checkpoint(config: ml_collections.ConfigDict, checkpoint: str,
                        workdir: Optional[str] = None) -> Dict[str, Any]:
  """Top-1, top-5, loss and images/s of `checkpoint` on the config's eval split and transform."""
  import tempfile  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(config.to_dict())
  config.init_from, config.eval_only = checkpoint, True
  with tempfile.TemporaryDirectory() as tmp:
    return train_and_evaluate(config, workdir or tmp)
