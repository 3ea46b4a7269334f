"""The official recipe's optimizer: timm's cosine schedule with warmup, AdamW, timm's decay rule."""

import flax
import jax.numpy as jnp
import optax


def create_learning_rate_schedule(config, steps_per_epoch: int):
  """timm's cosine schedule: linear warmup from `warmup_lr`, cosine over `num_epochs` (warmup
  included, as timm counts it) down to `min_lr`, then `min_lr` through the cooldown.

  `config.lr_step_unit` 'epoch' holds the rate for a whole epoch, as timm's `CosineLRScheduler`
  stepped once per epoch does in the official runs; 'step' moves it every optimizer step.
  """
  warmup = config.warmup_epochs * steps_per_epoch
  total = config.num_epochs * steps_per_epoch
  lr, warmup_lr, min_lr = config.learning_rate, config.warmup_lr, config.min_lr
  per_epoch = config.get('lr_step_unit', 'step') == 'epoch'

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    if per_epoch:  # the rate of the epoch's first step
      step = jnp.floor(step / steps_per_epoch) * steps_per_epoch
    warm = warmup_lr + (lr - warmup_lr) * step / max(warmup, 1)
    cos = min_lr + 0.5 * (lr - min_lr) * (1 + jnp.cos(jnp.pi * jnp.minimum(step, total) / total))
    return jnp.where(step < warmup, warm, jnp.where(step < total, cos, min_lr))

  return schedule


def weight_decay_mask(params):
  """timm's rule: no weight decay on biases and 1-D parameters (norms); the PE is decayed."""
  flat = flax.traverse_util.flatten_dict(params)
  return flax.traverse_util.unflatten_dict(
      {k: getattr(v, 'ndim', 0) > 1 and k[-1] != 'bias' for k, v in flat.items()})


def frozen_labels(params):
  """'frozen' for a text model's word embedding, 'trained' for everything else."""
  flat = flax.traverse_util.flatten_dict(params)
  return flax.traverse_util.unflatten_dict(
      {k: 'frozen' if k[0] == 'embedder' else 'trained' for k in flat})


def create_optimizer(config, schedule) -> optax.GradientTransformation:
  """Optional global-norm clipping, then AdamW on `schedule`. With `config.freeze_embedding` a
  text model's word embedding is outside both: no update, no decay, not in the clipped norm (as
  a PyTorch parameter without gradient)."""
  parts = []
  if config.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  parts.append(optax.adamw(schedule, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps,
                           weight_decay=config.weight_decay, mask=weight_decay_mask))
  tx = optax.chain(*parts)
  if config.get('freeze_embedding'):
    tx = optax.multi_transform({'trained': tx, 'frozen': optax.set_to_zero()}, frozen_labels)
  return tx
