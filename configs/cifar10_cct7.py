"""CCT-7/3x1, learnable PE, CIFAR-10, 300 + 10 epochs on one GPU.

  python train_main.py --config=configs/cifar10_cct7.py --workdir=DIR

Official: configs/pretrained/cct_7-3x1_cifar10_300epochs.yml (the run behind the released
checkpoint); published 96.53% top-1. The dataset yml (configs/datasets/cifar10.yml) differs only in
random erasing: reprob 0.25 there, 0 here as in the pretrained recipe.
"""

from configs import common


def get_config():
  c = common.get_config()
  c.model = 'cct_7_3x1_32'
  c.dataset = 'cifar10'
  c.dtype = 'auto'                  # the official runs use AMP
  c.num_epochs = 300
  c.cooldown_epochs = 10
  c.batch_size = 128
  c.learning_rate = 5.5e-4
  c.weight_decay = 6e-2
  c.warmup_epochs = 10
  c.warmup_lr = 1e-5
  c.min_lr = 1e-5
  c.label_smoothing = 0.1
  c.aug.mixup_off_epoch = 175
  c.aug.reprob = 0.0
  return c
