"""Top-5 labels for image files or texts from a trained, converted or official checkpoint.

  python -m compact_flax.predict --checkpoint DIR photo1.jpg photo2.png
  python -m compact_flax.predict --model cct_7_3x1_32 --pretrained [--source FILE.pth] photo.jpg
  python -m compact_flax.predict --checkpoint TEXT_DIR --text "Stocks rallied ..." [--text_file F]

Images of any size are resized with the checkpoint's eval transform (shorter side to
img_size / crop_pct, bicubic, centre crop, the training normalisation). Class names are those of
the dataset the checkpoint was trained on. An unreadable file is reported and the rest predicted.
Texts are split into words and mapped to ids with the vocabulary stored in the checkpoint; words
it lacks become `<unk>`, words past the model's length are cut.
"""

import argparse
import sys
from typing import Any, Dict, List, Sequence, Tuple

import jax
import numpy as np
from PIL import Image

from compact_flax import checkpoint
from compact_flax import input_pipeline
from compact_flax import text_data
from compact_flax import zoo


def eval_spec(spec: Dict[str, Any], model) -> Dict[str, Any]:
  """The spec's `data` block, filled in from the zoo's defaults where a checkpoint lacks it."""
  data = dict(spec.get('data') or {})
  if 'text' in data:
    return data
  default = zoo.data_spec(data.get('dataset') or zoo.default_dataset(spec.get('model', '')),
                          model.num_classes)
  for k, v in default.items():
    data.setdefault(k, v)
  if len(data['class_names']) != model.num_classes:
    data['class_names'] = [f'class {i}' for i in range(model.num_classes)]
  return data


def to_8bit(img):
  """16-bit, 32-bit integer and float greyscale images as 8-bit 'L', scaled rather than clipped
  (PIL's own conversion saturates them); other modes as they are, for `convert`."""
  if img.mode not in ('I;16', 'I;16B', 'I;16L', 'I;16N', 'I', 'F'):
    return img
  a = np.asarray(img, np.float64)
  if img.mode == 'F':
    scale = 255.0 if a.max() <= 1.0 else 1.0  # floats in [0, 1], else already in [0, 255]
  else:
    scale = 255.0 / 65535.0 if img.mode.startswith('I;16') or a.max() > 255 else 1.0
  return Image.fromarray(np.clip(np.round(a * scale), 0, 255).astype(np.uint8), 'L')


def preprocess(path: str, model, data: Dict[str, Any]) -> np.ndarray:
  """An image file -> (H, W, C) float32 as the model was evaluated in training."""
  h, w = (model.img_size,) * 2 if isinstance(model.img_size, int) else model.img_size
  with Image.open(path) as img:
    img = to_8bit(img).convert('L' if model.n_input_channels == 1 else 'RGB')
    img = input_pipeline.eval_resize_crop(img, (h, w), data['crop_pct'], data['interpolation'])
    x = np.asarray(img, np.float32).reshape(h, w, -1) / 255.
  return ((x - np.asarray(data['mean'], np.float32)) / np.asarray(data['std'], np.float32))


def predict_files(model, variables, data, paths: Sequence[str], top_k: int = 5
                  ) -> Tuple[List[Tuple[str, List[Tuple[str, float]]]], List[Tuple[str, str]]]:
  """([(path, [(class name, probability)] * top_k)], [(path, error)]) for image files."""
  images, ok, failed = [], [], []
  for path in paths:
    try:
      images.append(preprocess(path, model, data))
      ok.append(path)
    except Exception as e:  # pylint: disable=broad-except
      failed.append((path, f'{type(e).__name__}: {e}'))
  results = []
  if images:
    probs = np.asarray(jax.nn.softmax(jax.jit(model.apply)(variables, np.stack(images))
                                      .astype(np.float32)))
    results = list(zip(ok, _top(probs, data['class_names'], top_k)))
  return results, failed


def _top(probs, names, top_k):
  return [[(names[i], float(p[i])) for i in np.argsort(-p)[:top_k]] for p in probs]


def predict_texts(model, variables, data, texts: Sequence[str], top_k: int = 5
                  ) -> List[List[Tuple[str, float]]]:
  """[(class name, probability)] * top_k for each text, by a text checkpoint."""
  if 'text' not in data:
    raise ValueError('this checkpoint is an image model; pass image files, not --text.')
  vocab = text_data.Vocabulary(data['text']['vocab'])
  ids, mask = vocab.encode(texts, model.seq_len)
  logits = jax.jit(lambda v, i, m: model.apply(v, i, mask=m))(variables, ids, mask)
  return _top(np.asarray(jax.nn.softmax(logits.astype(np.float32))), data['class_names'], top_k)


def load(args):
  """(model, variables, data spec) from --checkpoint, or --model/--pretrained [--source]."""
  if args.checkpoint:
    directory = args.checkpoint
  elif args.model and args.pretrained:
    directory = zoo.pretrained_dir(args.model, args.source)
  else:
    raise SystemExit('Give --checkpoint DIR, or --model NAME --pretrained.')
  model, variables = checkpoint.load_model(directory)
  return model, variables, eval_spec(checkpoint.read_spec(directory), model)


# What a bad --checkpoint, --model or --source raises: reported in one line.
LOAD_ERRORS = (FileNotFoundError, ValueError, TypeError, OSError, RuntimeError, ImportError)


def describe(e: Exception) -> str:
  text = str(e).replace('\n', ' | ')
  return text if text else type(e).__name__


def positive_int(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f'{value} is not a positive integer')
  return value


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('images', nargs='*')
  parser.add_argument('--text', action='append', default=[], help='a text to classify (repeatable)')
  parser.add_argument('--text_file', help='a file of texts, one per line')
  parser.add_argument('--checkpoint', help='converted or trained checkpoint (or a workdir)')
  parser.add_argument('--model', help='registered name, with --pretrained')
  parser.add_argument('--pretrained', action='store_true')
  parser.add_argument('--source', help='local .pth, converted dir or URL for --pretrained')
  parser.add_argument('--top_k', type=positive_int, default=5)
  args = parser.parse_args(argv)
  try:
    texts = list(args.text)
    if args.text_file:
      with open(args.text_file, encoding='utf-8') as f:
        texts += [line.rstrip('\n') for line in f if line.strip()]
    if not texts and not args.images:
      raise ValueError('nothing to predict: give image files, --text or --text_file.')
    model, variables, data = load(args)
    if texts:
      if args.images:
        raise ValueError('give either image files or texts, not both.')
      for text, top in zip(texts, predict_texts(model, variables, data, texts, args.top_k)):
        print(f'{text[:60]!r}: ' + ', '.join(f'{name} {p:.3f}' for name, p in top))
      return 0
    if 'text' in data:
      raise ValueError('this checkpoint is a text model; pass --text or --text_file.')
  except LOAD_ERRORS as e:
    print(f'error: {describe(e)}', file=sys.stderr)
    return 1
  results, failed = predict_files(model, variables, data, args.images, args.top_k)
  for path, top in results:
    print(f'{path}: ' + ', '.join(f'{name} {p:.3f}' for name, p in top))
  for path, error in failed:
    print(f'{path}: cannot read this image ({error})', file=sys.stderr)
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
