"""Text-CCT on TREC question classification (TFDS `trec`, 6 coarse classes; the 47 fine ones with
--config.dataset_kwargs.label_key=label-fine), the official README's rows: choose the depth with
--config.model=text_cct_2|text_cct_4|text_cct_6 and the kernel with
--config.model_kwargs.kernel_size=1|2|4.

    python train_main.py --config=configs/trec_text_cct.py --workdir=DIR

The official repository publishes no text recipe; this one is ours (`common.get_text_config`),
with more epochs for TREC's 5,452 training questions. 64 words (the official default) holds every
TREC question.
"""

from configs import common


def get_config():
  c = common.get_text_config()
  c.model = 'text_cct_2'
  c.model_kwargs.kernel_size = 1
  c.dataset = 'trec'
  c.dataset_kwargs.seq_len = 64
  c.num_epochs = 50
  c.warmup_epochs = 5
  return c
