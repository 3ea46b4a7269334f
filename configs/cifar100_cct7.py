"""CCT-7/3x1, learnable PE, CIFAR-100, 300 + 10 epochs.

Official: configs/pretrained/cct_7-3x1_cifar100_300epochs.yml; published 80.92% top-1.
"""

from configs import cifar10_cct7


def get_config():
  c = cifar10_cct7.get_config()
  c.model = 'cct_7_3x1_32_c100'
  c.dataset = 'cifar100'
  c.learning_rate = 6e-4
  c.warmup_lr = 1e-6
  c.aug.mean = (0.5071, 0.4867, 0.4408)
  c.aug.std = (0.2675, 0.2565, 0.2761)
  c.aug.mixup_off_epoch = 0
  c.aug.reprob = 0.0
  return c
