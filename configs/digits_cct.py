"""A small CCT on scikit-learn's 8x8 handwritten digits: real data that ships with the package.

  python train_main.py --config=configs/digits_cct.py --workdir=/tmp/digits_cct

Trains CCT-2 (one 3x3 conv + pool: 16 tokens of width 128) for 30 epochs on 1,438 images and
evaluates on the fixed 359 held out. Expected: about 99% top-1 in well under a minute on a laptop
CPU (measured: docs/notes.md); the tests require at least 95%.
"""

from configs import common


def get_config():
  c = common.get_config()
  c.model = 'cct_2_3x2_32'
  c.model_kwargs.img_size = 8
  c.model_kwargs.n_input_channels = 1
  c.model_kwargs.n_conv_layers = 1
  c.dataset = 'digits'
  c.num_epochs = 30
  c.cooldown_epochs = 0
  c.batch_size = 64
  c.eval_batch_size = 128
  c.learning_rate = 2e-3
  c.lr_step_unit = 'step'           # a short run: the rate moves every step
  c.warmup_epochs = 3
  c.weight_decay = 0.05
  c.aug.mixup = 0.0
  c.aug.cutmix = 0.0
  c.log_every_steps = 100
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 2
  return c
