"""Text-CCT-2 (kernel 1) on a SYNTHETIC four-topic task made on the spot: runs anywhere, no download.

    python train_main.py --config=configs/synthetic_text_cct.py --workdir=/tmp/text_cct

The sentences are generated (`text_data.synthetic_text`), so the accuracy says the pipeline
works, not how good the model is. The recipe is the text recipe of configs/common.py, shortened.
"""

from configs import common


def get_config():
  c = common.get_text_config()
  c.model = 'text_cct_2'
  c.model_kwargs.kernel_size = 1
  c.dataset = 'synthetic_text'
  c.dataset_kwargs.seq_len = 48
  c.num_epochs = 4
  c.warmup_epochs = 1
  c.batch_size = 64
  c.learning_rate = 1e-3
  c.log_every_steps = 20
  c.checkpoint_async = False
  return c
