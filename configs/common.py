"""Defaults shared by every config: the official CIFAR recipe's optimiser and schedule (timm's
train.py with configs/datasets/cifar10.yml). Each recipe overrides what differs."""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.model = 'cct_7_3x1_32'          # a registered name: compact_flax.list_models()
  c.model_kwargs = ml_collections.ConfigDict()  # constructor overrides, e.g. img_size
  c.dtype = 'float32'               # compute dtype: 'float32' or 'bfloat16' (params stay float32)
  c.dataset = 'cifar10'
  c.dataset_kwargs = ml_collections.ConfigDict()
  c.seed = 0

  c.num_epochs = 300
  c.cooldown_epochs = 10            # at min_lr after the cosine
  c.batch_size = 128                # global, over all devices and hosts
  c.eval_batch_size = 256
  c.grad_accum_steps = 1            # splits each batch into micro-batches; same update

  c.learning_rate = 5.5e-4
  c.warmup_epochs = 10
  c.warmup_lr = 1e-5
  c.min_lr = 1e-5
  c.weight_decay = 6e-2             # not on biases and 1-D parameters (timm)
  c.adam_b1 = 0.9
  c.adam_b2 = 0.999
  c.adam_eps = 1e-8
  c.grad_clip_norm = 0.0            # 0: off
  c.label_smoothing = 0.1
  c.ema_decay = 0.0                 # 0: no EMA; else e.g. 0.9998, evaluated alongside

  c.log_every_steps = 50
  c.eval_every_epochs = 1
  c.checkpoint_every_steps = 1000   # and at the end of every epoch
  c.keep_checkpoints = 3
  c.init_from = ''                  # converted or trained checkpoint directory to start from
  c.eval_only = False
  return c
