"""Fine-tune CCT-14/7x2 at 384 px from ImageNet to Oxford Flowers-102, 300 + 10 epochs.

  python train_main.py --config=configs/finetune_flowers102_cct14.py --workdir=DIR \
      --config.init_from=converted/cct_14_7x2_384

Official: configs/finetuned/cct_14-7x2_flowers102.yml; published 99.76% top-1. The head is
re-initialised for 102 classes.
"""

from configs import flowers102_cct7_7x2


def get_config():
  c = flowers102_cct7_7x2.get_config()
  c.model = 'cct_14_7x2_384_fl'
  c.init_from = ''                  # required: ImageNet 384 px weights
  c.batch_size = 20
  c.eval_batch_size = 20
  c.learning_rate = 5e-5
  c.min_lr = 1e-8
  c.weight_decay = 5e-2
  c.warmup_lr = 1e-6
  c.aug.img_size = 384
  c.aug.reprob = 0.25
  return c
