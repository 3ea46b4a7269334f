"""CCT-7/7x2 at 224 px, sinusoidal PE, Oxford Flowers-102 from scratch, 300 + 10 epochs.

Official: configs/pretrained/cct_7-7x2_flowers102.yml (train on 'train', evaluate on 'valid');
published 97.19% top-1. TFDS: oxford_flowers102, splits train / validation.
"""

from configs import common


def get_config():
  c = common.get_config()
  c.model = 'cct_7_7x2_224_sine'
  c.dataset = 'oxford_flowers102'
  c.train_split = 'train'
  c.eval_split = 'validation'
  c.dtype = 'auto'
  c.num_epochs = 300
  c.cooldown_epochs = 10
  c.batch_size = 96
  c.eval_batch_size = 96
  c.learning_rate = 5e-4
  c.weight_decay = 6e-2
  c.warmup_epochs = 10
  c.warmup_lr = 1e-6
  c.min_lr = 1e-5
  c.aug.img_size = 224
  c.aug.mean = (0.4353, 0.3773, 0.2872)
  c.aug.std = (0.2966, 0.2455, 0.2698)
  c.aug.reprob = 0.0
  c.aug.mixup_off_epoch = 0
  return c
