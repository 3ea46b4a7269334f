"""Text-CCT on AG News (TFDS `ag_news_subset`: title and description, 4 classes), the official
README's rows: choose the depth with --config.model=text_cct_2|text_cct_4|text_cct_6 and the
kernel with --config.model_kwargs.kernel_size=1|2|4.

    python train_main.py --config=configs/agnews_text_cct.py --workdir=DIR \
        [--config.dataset_kwargs.word_vectors=glove.840B.300d.txt --config.freeze_embedding=True]

The official repository publishes neither a text recipe nor a vocabulary; this one is ours (see
`common.get_text_config`). 200 words per text: the length the official AG News checkpoint's
positional table implies. With word vectors frozen, the trainable count is the README's `# Params`.
"""

from configs import common


def get_config():
  c = common.get_text_config()
  c.model = 'text_cct_2'
  c.model_kwargs.kernel_size = 1
  c.dataset = 'ag_news_subset'
  c.dataset_kwargs.seq_len = 200
  c.num_epochs = 10
  c.warmup_epochs = 1
  return c
