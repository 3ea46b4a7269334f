"""What a CCT looks at: the sequence-pooling weight of every token, as a heat map over the image.

  python -m compact_flax.visualize --checkpoint DIR photo.jpg --output attention.png

Sequence pooling gives each token one softmax weight; tokens are a grid over the image, so the
weights upsample to a map. For ViT-Lite (no pooling) the map is the class token's attention in the
last layer, averaged over heads. The PNG shows the input (as the model saw it) and the overlay
side by side.
"""

import argparse
import os
import sys

import numpy as np
from PIL import Image

from compact_flax import predict


def token_weights(model, variables, images) -> np.ndarray:
  """(batch, rows, cols) weights summing to 1 per image."""
  _, state = model.apply(variables, images, mutable='intermediates')
  inter = state['intermediates']['classifier']
  if 'pooling_weights' in inter:
    w = inter['pooling_weights'][0]
  else:  # ViT-Lite: the class token's attention over the patch tokens in the last layer
    last = inter[f'blocks_{model.num_layers - 1}']['self_attn']['attention_weights'][0]
    w = last.mean(axis=1)[:, 0, 1:]
    w = w / w.sum(-1, keepdims=True)
  rows, cols = model.grid_size()
  return np.asarray(w, np.float32).reshape(-1, rows, cols)


def _colormap(x):
  """A perceptual-ish blue-to-yellow ramp for values in [0, 1] -> uint8 RGB."""
  stops = np.array([[48, 18, 59], [70, 107, 227], [27, 208, 213], [164, 252, 60], [251, 185, 56],
                    [122, 4, 3]], np.float32)
  pos = np.clip(x, 0, 1) * (len(stops) - 1)
  i = np.minimum(pos.astype(int), len(stops) - 2)
  t = (pos - i)[..., None]
  return (stops[i] * (1 - t) + stops[i + 1] * t).astype(np.uint8)


def render(image01: np.ndarray, weights: np.ndarray, panel: int = 256):
  """PIL image: [input | input with the heat map over it], each `panel` pixels high."""
  h, w = image01.shape[:2]
  size = (max(1, round(panel * w / h)), panel)
  rgb = np.repeat(image01, 3, axis=-1) if image01.shape[-1] == 1 else image01
  base = Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8)).resize(size, Image.NEAREST)
  heat = weights / max(weights.max(), 1e-12)
  heat = Image.fromarray((heat * 255).astype(np.uint8)).resize(size, Image.BILINEAR)
  overlay = Image.blend(base, Image.fromarray(_colormap(np.asarray(heat) / 255.)), 0.5)
  out = Image.new('RGB', (2 * size[0], size[1]))
  out.paste(base, (0, 0))
  out.paste(overlay, (size[0], 0))
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('image')
  parser.add_argument('--output', required=True, help='PNG to write')
  parser.add_argument('--checkpoint')
  parser.add_argument('--model')
  parser.add_argument('--pretrained', action='store_true')
  parser.add_argument('--source')
  parser.add_argument('--panel', type=predict.positive_int, default=256,
                      help='height of each panel in pixels')
  args = parser.parse_args(argv)
  folder = os.path.dirname(os.path.abspath(args.output))
  if not os.path.isdir(folder):
    print(f'error: --output {args.output}: the folder {folder} does not exist.', file=sys.stderr)
    return 1
  try:
    model, variables, data = predict.load(args)
  except predict.LOAD_ERRORS as e:
    print(f'error: {predict.describe(e)}', file=sys.stderr)
    return 1
  try:
    x = predict.preprocess(args.image, model, data)
  except Exception as e:  # pylint: disable=broad-except
    print(f'error: {args.image}: cannot read this image ({type(e).__name__}: {e})',
          file=sys.stderr)
    return 1
  weights = token_weights(model, variables, x[None])[0]
  shown = x * np.asarray(data['std'], np.float32) + np.asarray(data['mean'], np.float32)
  try:
    render(shown, weights, args.panel).save(args.output)
  except (OSError, ValueError) as e:
    print(f'error: cannot write {args.output} ({e})', file=sys.stderr)
    return 1
  results, _ = predict.predict_files(model, variables, data, [args.image], 1)
  name, p = results[0][1][0]
  print(f'Wrote {args.output}: top-1 {name} ({p:.3f}); pooling weights max {weights.max():.3f} '
        f'on a {weights.shape[0]}x{weights.shape[1]} token grid.')
  return 0


if __name__ == '__main__':
  sys.exit(main())
