"""CCT-14/7x2 at 224 px, ImageNet-1k, 300 + 10 epochs, global batch 1024 (8 x 128): a TPU pod.

  python train_main.py --config=configs/imagenet_cct14.py --workdir=/mnt/shared/run \
      --config.data_dir=gs://BUCKET/tfds

The workdir is a file-system path every host sees (NFS, Filestore, a mounted bucket); TFDS reads
gs:// itself.

Official: configs/pretrained/cct_14-7x2_imagenet.yml on 8 GPUs x 128; published 80.67% top-1.
The per-image augmentation runs on the device (`aug.on_device='auto'`: the hosts of a pod feed
many chips).
"""

from configs import common


def get_config():
  c = common.get_config()
  c.model = 'cct_14_7x2_224'
  c.dataset = 'imagenet2012'
  c.dtype = 'auto'
  c.num_epochs = 300
  c.cooldown_epochs = 10
  c.batch_size = 1024
  c.eval_batch_size = 1024
  c.learning_rate = 5e-4
  c.weight_decay = 5e-2
  c.warmup_epochs = 10
  c.warmup_lr = 1e-6
  c.min_lr = 1e-5
  c.aug.img_size = 224
  c.aug.mean = (0.485, 0.456, 0.406)
  c.aug.std = (0.229, 0.224, 0.225)
  c.aug.crop_pct = 0.9
  c.aug.scale = (0.08, 1.0)
  c.aug.reprob = 0.25
  c.aug.mixup_off_epoch = 0
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2000
  return c
