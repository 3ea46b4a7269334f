"""CCT-7/3x1, "sine" PE (trained learnable, as the official run), CIFAR-10, 5000 + 10 epochs.

Official: configs/pretrained/cct_7-3x1_cifar10_5000epochs.yml; published 98.00% top-1.
The positional embedding is learnable for the reason the 1500-epoch config gives.
"""

from configs import cifar10_cct7_sine_1500


def get_config():
  c = cifar10_cct7_sine_1500.get_config()
  c.num_epochs = 5000
  return c
