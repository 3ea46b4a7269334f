"""Converts an official Compact Transformers PyTorch checkpoint into a compact-flax checkpoint.

  python convert_torch_weights.py --model cct_7_3x1_32 --checkpoint cct_7_3x1_32.pth --output DIR

The output directory holds the weights and the model's name and arguments; reload it with
`model, variables = compact_flax.load_model(DIR)`, or train from it with `--config.init_from=DIR`.
"""

import logging
import sys

from absl import app
from absl import flags
from absl import logging as absl_logging

from compact_flax import checkpoint
from compact_flax import convert
from compact_flax import models

flags.DEFINE_string('model', None, 'Registered model name, e.g. cct_7_3x1_32.', required=True)
flags.DEFINE_string('checkpoint', None, 'The .pth file (state dict or timm checkpoint).',
                    required=True)
flags.DEFINE_string('output', None, 'Directory to write.', required=True)
flags.DEFINE_integer('img_size', None, 'New input resolution (resizes the positional embedding); '
                     'vision models only.')
flags.DEFINE_integer('num_classes', None, 'New class count (re-initialises the head).')
flags.DEFINE_bool('ema', False, "Convert timm's EMA weights (state_dict_ema).")
flags.DEFINE_bool('force', False, 'Replace an existing output directory.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax and JAX chatter
  logging.getLogger('compact_flax').setLevel(logging.INFO)
  try:
    model, variables = convert.load_torch_checkpoint(
        FLAGS.checkpoint, FLAGS.model, img_size=FLAGS.img_size, num_classes=FLAGS.num_classes,
        use_ema=FLAGS.ema)
    kwargs = models.constructor_arguments(model)
    out = checkpoint.save_model(FLAGS.output, FLAGS.model, kwargs, variables, force=FLAGS.force)
  except (convert.CheckpointError, FileExistsError, FileNotFoundError, ImportError, ValueError,
          TypeError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  size = (f'inputs of up to {model.seq_len} words, vocabulary {model.vocab_size}'
          if hasattr(model, 'seq_len') else f'img_size {model.img_size}')
  print(f'Wrote {FLAGS.model} ({model.num_classes} classes, {size}, '
        f'{model.positional_embedding} positional embedding) to {out}\n'
        f'Load it with: model, variables = compact_flax.load_model({out!r})')
  return 0


if __name__ == '__main__':
  app.run(main)
