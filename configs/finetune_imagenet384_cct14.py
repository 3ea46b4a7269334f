"""Fine-tune CCT-14/7x2 from 224 to 384 px on ImageNet-1k, 30 + 10 epochs.

  python train_main.py --config=configs/finetune_imagenet384_cct14.py --workdir=DIR \
      --config.init_from=converted/cct_14_7x2_224

Official: configs/finetuned/cct_14-7x2_imagenet384.yml; published 82.71% top-1. `init_from` (a
converted cct_14_7x2_224 or an imagenet_cct14.py run) has its positional embedding resized to 384.
"""

from configs import imagenet_cct14


def get_config():
  c = imagenet_cct14.get_config()
  c.model = 'cct_14_7x2_384'
  c.init_from = ''                  # required: the 224 px weights
  c.num_epochs = 30
  c.batch_size = 768                # 8 x 96
  c.learning_rate = 1e-5
  c.min_lr = 0.0
  c.weight_decay = 0.0
  c.warmup_epochs = 0
  c.warmup_lr = 0.0
  c.aug.img_size = 384
  return c
