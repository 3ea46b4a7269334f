"""CCT-7/3x1, sinusoidal PE, CIFAR-100, 1500 + 10 epochs.

Official: configs/pretrained/cct_7-3x1_cifar100_1500epochs.yml; published 82.72% top-1.
"""

from configs import cifar100_cct7


def get_config():
  c = cifar100_cct7.get_config()
  c.model = 'cct_7_3x1_32_sine_c100'
  c.num_epochs = 1500
  c.learning_rate = 7e-4
  c.weight_decay = 5e-2
  return c
