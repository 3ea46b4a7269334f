"""Defaults shared by every config: the official CIFAR recipe's optimiser and schedule (timm's
train.py with configs/datasets/cifar10.yml). Each recipe overrides what differs."""

import ml_collections
from ml_collections import config_dict

# Every constructor argument of CCT, CVT and ViTLite, so any can be set from the command line
# (--config.model_kwargs.num_heads=4); None keeps the registered variant's value.
MODEL_ARGS = {
    'img_size': object, 'embedding_dim': int, 'n_input_channels': int, 'dropout': float,
    'attention_dropout': float, 'stochastic_depth': float, 'num_layers': int, 'num_heads': int,
    'mlp_ratio': float, 'num_classes': int, 'positional_embedding': str, 'n_conv_layers': int,
    'kernel_size': int, 'stride': int, 'padding': int, 'pooling_kernel_size': int,
    'pooling_stride': int, 'pooling_padding': int, 'scan_layers': bool,
}
# The text models' own arguments (vocab_size and seq_len come from the dataset when unset).
TEXT_MODEL_ARGS = {
    'embedding_dim': int, 'dropout': float, 'attention_dropout': float, 'stochastic_depth': float,
    'num_layers': int, 'num_heads': int, 'mlp_ratio': float, 'num_classes': int,
    'positional_embedding': str, 'kernel_size': int, 'stride': int, 'padding': int,
    'pooling_kernel_size': int, 'pooling_stride': int, 'pooling_padding': int, 'patch_size': int,
    'seq_len': int, 'vocab_size': int, 'word_embedding_dim': int, 'padding_idx': int,
    'mask_pooling': bool, 'scan_layers': bool,
}


def get_config():
  c = ml_collections.ConfigDict()
  c.model = 'cct_7_3x1_32'          # a registered name: compact_flax.list_models()
  c.model_kwargs = ml_collections.ConfigDict(
      {k: config_dict.placeholder(t) for k, t in MODEL_ARGS.items()})
  # Compute dtype (params stay float32): 'float32', 'bfloat16', 'float16' (with dynamic loss
  # scaling), or 'auto': bfloat16 on TPUs and GPUs that have it, float16 on older GPUs, float32
  # on CPUs (compact_flax/precision.py), as the official recipes' AMP.
  c.dtype = 'float32'
  c.loss_scale_init = 2.0**15       # float16: the first loss scale
  c.loss_scale_growth_interval = 2000  # float16: finite steps before the scale doubles
  c.dataset = 'cifar10'             # TFDS name, 'digits', 'synthetic' or 'folder:/path'
  c.dataset_kwargs = ml_collections.ConfigDict()
  c.data_dir = ''                   # TFDS data_dir; '' = TFDS's default
  c.train_split = ''                # '' = the dataset's usual one
  c.eval_split = ''
  c.seed = 0

  c.num_epochs = 300
  c.cooldown_epochs = 10            # at min_lr after the cosine
  c.batch_size = 128                # global, over all devices and hosts
  c.eval_batch_size = 256
  c.grad_accum_steps = 1            # splits each batch into micro-batches; same update

  c.learning_rate = 5.5e-4
  c.lr_step_unit = 'epoch'          # the official runs step timm's scheduler per epoch; or 'step'
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

  # The per-image recipe and Mixup/CutMix, named as in the official yml (timm's train.py flags).
  c.aug = ml_collections.ConfigDict()
  c.aug.img_size = 32
  c.aug.mean = (0.4914, 0.4822, 0.4465)
  c.aug.std = (0.2470, 0.2435, 0.2616)
  c.aug.crop_pct = 1.0              # eval: resize to img_size / crop_pct, centre crop
  c.aug.interpolation = 'bicubic'   # eval resize
  c.aug.scale = (0.8, 1.0)          # random-resized-crop area fraction
  c.aug.ratio = (3 / 4, 4 / 3)      # random-resized-crop aspect ratio (timm default)
  c.aug.train_interpolation = 'random'  # bilinear or bicubic per image
  c.aug.hflip = 0.5
  c.aug.auto_augment = 'rand-m9-mstd0.5-inc1'  # timm RandAugment; '' = none
  c.aug.color_jitter = 0.4          # brightness/contrast/saturation; only where auto_augment is ''
  c.aug.reprob = 0.0                # random erasing probability
  c.aug.remode = 'pixel'
  c.aug.mixup = 0.8                 # Beta alpha; 0 = off
  c.aug.cutmix = 1.0                # Beta alpha; 0 = off
  c.aug.mixup_prob = 1.0
  c.aug.mixup_switch_prob = 0.5
  c.aug.mixup_mode = 'batch'
  c.aug.mixup_off_epoch = 0         # 0 = never off (timm)
  # RandAugment (and fixed-size crops) in the jitted step instead of on the host: True, False, or
  # 'auto': in the step on GPUs and TPUs, on the host on CPUs (faster there).
  c.aug.on_device = config_dict.FieldReference('auto', field_type=object)

  c.profile_steps = ''              # 'START:STOP': a jax.profiler trace of those steps in WORKDIR/profile
  c.log_every_steps = 50
  c.eval_every_epochs = 1
  c.checkpoint_every_steps = 1000   # and at the end of every epoch
  c.keep_checkpoints = 3
  c.checkpoint_async = True         # write in the background while training goes on
  c.init_from = ''                  # converted or trained checkpoint directory to start from
  c.eval_only = False
  return c


def get_text_config():
  """Defaults of the text recipes. The official repository publishes no text recipe; this one takes
  the optimiser of its `examples/main.py` (AdamW 5e-4, weight decay 3e-2, label smoothing 0.1,
  batch 128, cosine with warmup) and steps the rate every step. No Mixup or image augmentation."""
  c = get_config()
  del c.aug
  c.model = 'text_cct_2'
  c.model_kwargs = ml_collections.ConfigDict(
      {k: config_dict.placeholder(t) for k, t in TEXT_MODEL_ARGS.items()})
  c.dataset = 'ag_news_subset'
  # seq_len: words per text (longer ones are cut); min_freq / max_vocab: vocabulary from the
  # training split; word_vectors: a GloVe/word2vec text file to start the embedding from;
  # text_keys / label_key: the features of a TFDS dataset the project does not know by name.
  c.dataset_kwargs = ml_collections.ConfigDict({
      'seq_len': 64, 'min_freq': 1, 'max_vocab': config_dict.placeholder(int),
      'word_vectors': '', 'text_keys': config_dict.placeholder(tuple),
      'label_key': config_dict.placeholder(str)})
  c.freeze_embedding = False        # keep the word embedding fixed (with word_vectors)
  c.num_epochs = 10
  c.cooldown_epochs = 0
  c.batch_size = 128
  c.learning_rate = 5e-4
  c.lr_step_unit = 'step'
  c.warmup_epochs = 1
  c.weight_decay = 3e-2
  c.label_smoothing = 0.1
  c.checkpoint_every_steps = 1000
  return c
