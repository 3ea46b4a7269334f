"""The train state, the train and eval steps, and the factories that jit them over a mesh.

`make_train_step` and `make_eval_step` are what `train_and_evaluate` runs, and what the benchmarks
time: the same function, shardings and donation.
"""

import functools
import threading
from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from compact_flax import augment
from compact_flax import devices
from compact_flax import merge
from compact_flax import precision

# The recipe's part inside the step (augment.DeviceAugment); None: batches arrive as model input.
DeviceAugment = Optional[augment.DeviceAugment]


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any = None
  loss_scale: Optional[precision.LossScale] = None  # float16 compute only


def create_train_state(config, model, tx, params=None) -> TrainState:
  """Step 0: `params` (default: the model's init with `config.seed`), fresh optimizer state, and
  for a float16 model the initial loss scale."""
  if params is None:
    params = merge.init_variables(model, config.seed)['params']
  ema = jax.tree.map(jnp.copy, params) if config.ema_decay else None
  scale = (precision.LossScale.create(config.get('loss_scale_init', 2.0**15),
                                      config.get('loss_scale_growth_interval', 2000))
           if model.dtype == jnp.float16 else None)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    ema_params=ema, loss_scale=scale)


def init_state(config, model, tx, mesh: Mesh, params=None) -> TrainState:
  """`create_train_state`, computed on the devices and replicated over `mesh`. Given `params`
  (loaded on one device, or host arrays) are copied onto every device of the mesh first."""
  replicated = devices.replicated(mesh)
  if params is not None:
    params = jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(replicated, np.asarray(x)), params)
  return jax.jit(functools.partial(create_train_state, config, model, tx),
                 out_shardings=replicated)(params)


def abstract_state(config, model, tx, mesh: Mesh) -> TrainState:
  """Shapes, dtypes and shardings of the train state, without computing it (for restoring)."""
  shapes = jax.eval_shape(functools.partial(create_train_state, config, model, tx))
  sharding = devices.replicated(mesh)
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), shapes)


def cross_entropy(logits, labels, num_classes: int, label_smoothing: float = 0.0):
  """Per-example softmax cross-entropy with smoothed one-hot targets, in float32."""
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def model_inputs(batch):
  """A batch's model input: its images, or a text batch's word ids and their mask."""
  if 'ids' in batch:
    return {'ids': batch['ids'], 'token_mask': batch['token_mask']}
  return batch['image']


def apply_model(model, params, inputs, **kwargs):
  """The model on a batch's inputs: images, or a text batch's word ids and their mask."""
  if isinstance(inputs, dict):
    return model.apply({'params': params}, inputs['ids'], mask=inputs['token_mask'], **kwargs)
  return model.apply({'params': params}, inputs, **kwargs)


def _gradients(state, images, targets, key, *, model, accum_steps: int, scale=None):
  """(mean loss, mean gradients), over `accum_steps` micro-batches of rows j, j+k, ...: each
  stays on the device that holds it. With a loss `scale`, the gradients are taken of the loss
  times it and divided by it after (float16: small gradients do not flush to zero)."""
  def loss_fn(params, images, targets, key):
    logits = apply_model(model, params, images, train=True, rngs={'dropout': key})
    loss = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean()
    return loss if scale is None else loss * scale

  grad_fn = jax.value_and_grad(loss_fn)
  unscale = (lambda x: x) if scale is None else (
      lambda lg: jax.tree.map(lambda x: x / scale, lg))
  k = accum_steps
  if k == 1:
    return unscale(grad_fn(state.params, images, targets, key))
  micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape((-1, k) + x.shape[1:]), 0, 1),
                       (images, targets))

  def accumulate(carry, inputs):
    i, (mb_images, mb_targets) = inputs
    loss, grads = grad_fn(state.params, mb_images, mb_targets, jax.random.fold_in(key, i))
    return jax.tree.map(jnp.add, carry, (loss, grads)), None

  zero = (jnp.zeros(()), jax.tree.map(jnp.zeros_like, state.params))
  # Unrolled: XLA's CPU backend gives convolutions inside a while loop a naive kernel
  # (docs/notes.md).
  (loss, grads), _ = jax.lax.scan(accumulate, zero, (jnp.arange(k), micro), unroll=True)
  return unscale(jax.tree.map(lambda x: x / k, (loss, grads)))


def step_keys(rng, step):
  """The keys of one training step from the run's key: dropout, the recipe's part in the step,
  Mixup/CutMix, and the host augmentation of the step's batch. (In JAX `fold_in(k, i)` equals
  `split(k, n)[i]`: no key here is both split and folded, so the four streams stay apart.)"""
  return jax.random.split(jax.random.fold_in(rng, step), 4)


def prepare_batch(batch, k_aug, k_mix, *, num_classes: int, config,
                  device_augment: DeviceAugment = None, mix: Any = True):
  """(model input, soft targets) of a training batch, in the official loader's order: the
  per-image recipe left to the step (`device_augment.before`), Mixup/CutMix with label smoothing
  (`mix`: whether it is still on), normalisation and random erasing (`device_augment.after`)."""
  if 'ids' in batch:  # text: label smoothing only
    return (model_inputs(batch),
            optax.smooth_labels(jax.nn.one_hot(batch['label'], num_classes),
                                config.label_smoothing))
  aug = config.get('aug') or {}
  images = batch['image'].astype(jnp.float32)
  k_before, k_after = jax.random.split(k_aug)
  if device_augment is not None:
    images = device_augment.before(images, k_before)
  images, targets = augment.mixup_cutmix(
      images, batch['label'], k_mix, num_classes=num_classes,
      smoothing=config.label_smoothing, mixup_alpha=aug.get('mixup', 0.),
      cutmix_alpha=aug.get('cutmix', 0.), prob=aug.get('mixup_prob', 1.),
      switch_prob=aug.get('mixup_switch_prob', .5), mode=aug.get('mixup_mode', 'batch'),
      enabled=mix, round_pixels=device_augment is not None)
  if device_augment is not None:
    images = device_augment.after(images, k_after)
  return images, targets


def train_step(state: TrainState, batch, rng, *, model, tx, config,
               device_augment: DeviceAugment = None, mixup_until_step=None):
  """One optimizer step on a global batch: (state, batch, rng) -> (state, metrics).

  On the device: `prepare_batch` (Mixup/CutMix until `mixup_until_step`; None: always), forward,
  backward, AdamW, EMA. With a loss scale (float16), a step whose gradients are not all finite
  leaves parameters, optimizer state and EMA as they were and halves the scale; `metrics['skipped']`
  says whether a step was such a skip that can be retried smaller (a non-finite loss at the
  smallest scale, 1, is a failure).
  """
  k_drop, k_aug, k_mix, _ = step_keys(rng, state.step)
  images, targets = prepare_batch(
      batch, k_aug, k_mix, num_classes=model.num_classes, config=config,
      device_augment=device_augment,
      mix=True if mixup_until_step is None else state.step < mixup_until_step)
  scaling = state.loss_scale
  loss, grads = _gradients(state, images, targets, k_drop, model=model,
                           accum_steps=config.grad_accum_steps,
                           scale=None if scaling is None else scaling.scale)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = state.ema_params
  if ema is not None:
    ema = optax.incremental_update(params, ema, 1.0 - config.ema_decay)
  metrics = {'loss': loss, 'grad_norm': optax.tree.norm(grads)}
  if scaling is not None:
    finite = precision.all_finite(grads)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
    ema = None if ema is None else keep(ema, state.ema_params)
    metrics.update(loss_scale=scaling.scale, skipped=~finite & (scaling.scale > 1.0))
    scaling = scaling.update(finite)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                       ema_params=ema, loss_scale=scaling), metrics


def eval_step(params, batch, *, model):
  """Sums over the real (unmasked) rows: loss, top-1 and top-5 hits, count."""
  logits = apply_model(model, params, model_inputs(batch), train=False).astype(jnp.float32)
  mask = batch['mask'].astype(jnp.float32)
  loss = cross_entropy(logits, batch['label'], model.num_classes)
  topk = jax.lax.top_k(logits, min(5, model.num_classes))[1]
  hits = topk == batch['label'][:, None]
  return {'loss': (loss * mask).sum(), 'top1': (hits[:, 0] * mask).sum(),
          'top5': (hits.any(-1) * mask).sum(), 'count': mask.sum()}


def make_train_step(config, model, tx, mesh: Mesh, *, steps_per_epoch: int,
                    device_augment: DeviceAugment = None):
  """`train_step` jitted over `mesh`: state replicated and donated, batch sharded on 'data'.

  Mixup/CutMix stop after `config.aug.mixup_off_epoch` epochs (0: never, as in timm).
  """
  mixup_off = (config.get('aug') or {}).get('mixup_off_epoch', 0)
  step = functools.partial(train_step, model=model, tx=tx, config=config,
                           device_augment=device_augment,
                           mixup_until_step=mixup_off * steps_per_epoch if mixup_off else None)
  replicated = devices.replicated(mesh)
  return jax.jit(step, in_shardings=(replicated, devices.batch_sharded(mesh), replicated),
                 out_shardings=(replicated, replicated), donate_argnums=0)


def compile_ahead(jitted, *args) -> threading.Thread:
  """Compiles `jitted` for `args` (arrays or `jax.ShapeDtypeStruct`s with shardings) in a thread,
  beside whatever comes next: a call with arguments of those shapes, dtypes and shardings then
  finds the program in jit's cache. Join the thread before that call, or it compiles twice. An
  error here is left for that call to raise, with its real arguments."""
  def compile_():
    try:
      jitted.lower(*args).compile()
    except Exception:  # pylint: disable=broad-except
      pass
  thread = threading.Thread(target=compile_, daemon=True, name='compact_flax-compile-step')
  thread.start()
  return thread


def make_eval_step(model, mesh: Mesh):
  """`eval_step` jitted over `mesh`: params replicated, batch sharded, sums replicated."""
  return jax.jit(functools.partial(eval_step, model=model),
                 in_shardings=(devices.replicated(mesh), devices.batch_sharded(mesh)),
                 out_shardings=devices.replicated(mesh))
