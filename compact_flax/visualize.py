"""What a CCT looks at: the sequence-pooling weight of every token, as a heat map over the image
or as shading over the words of a text.

  python -m compact_flax.visualize --checkpoint DIR photo.jpg --output attention.png
  python -m compact_flax.visualize --checkpoint TEXT_DIR --text "..." --output words.html

Sequence pooling gives each token one softmax weight; tokens are a grid over the image, so the
weights upsample to a map. For ViT-Lite (no pooling) the map is the class token's attention in the
last layer, averaged over heads. The PNG shows the input (as the model saw it) and the overlay
side by side. A text model's token weights go to the words each token was computed from (shared
equally among them); the HTML page shades every word by its weight.
"""

import argparse
import html
import os
import sys

import numpy as np
from PIL import Image

from compact_flax import predict
from compact_flax import text_data


def _pooled(model, state) -> np.ndarray:
  """(batch, tokens): sequence pooling's weights, or (a class token) the class token's attention
  over the other tokens in the last layer, averaged over heads."""
  inter = state['intermediates']['classifier']
  if 'pooling_weights' in inter:
    w = inter['pooling_weights'][0]
  else:  # ViT-Lite: the class token's attention over the patch tokens in the last layer
    if 'blocks' in inter:  # scanned layers: weights stacked over layers
      last = inter['blocks']['self_attn']['attention_weights'][0][-1]
    else:
      last = inter[f'blocks_{model.num_layers - 1}']['self_attn']['attention_weights'][0]
    w = last.mean(axis=1)[:, 0, 1:]
    w = w / w.sum(-1, keepdims=True)
  return np.asarray(w, np.float32)


def token_weights(model, variables, images) -> np.ndarray:
  """(batch, rows, cols) weights summing to 1 per image."""
  _, state = model.apply(variables, images, mutable='intermediates')
  rows, cols = model.grid_size()
  return _pooled(model, state).reshape(-1, rows, cols)


def word_weights(model, variables, ids, mask) -> np.ndarray:
  """(batch, seq_len) weights of the words, summing to 1 over each text's real words."""
  _, state = model.apply(variables, ids, mask=mask, mutable='intermediates')
  fields = model.receptive_fields()[None] & np.asarray(mask, bool)[:, None, :]
  share = fields / np.maximum(fields.sum(-1, keepdims=True), 1)
  return np.einsum('bt,btl->bl', _pooled(model, state), share)


def render_text(words, weights, title: str) -> str:
  """An HTML page: the words, each shaded by its weight (the heaviest fully)."""
  top = max(float(np.max(weights)), 1e-12) if len(weights) else 1.0
  spans = ''.join(
      f'<span title="{w:.4f}" style="background: rgba(251, 185, 56, {w / top:.3f}); '
      f'padding: 2px; margin: 1px">{html.escape(word)}</span> '
      for word, w in zip(words, weights))
  return (f'<!doctype html><meta charset="utf-8"><title>{html.escape(title)}</title>'
          f'<body style="font: 18px sans-serif; line-height: 2"><p>{html.escape(title)}</p>'
          f'<p>{spans}</p></body>\n')


def _text_main(args, model, variables, data) -> int:
  if 'text' not in data:
    print('error: this checkpoint is an image model; pass an image, not --text.', file=sys.stderr)
    return 1
  vocab = text_data.Vocabulary(data['text']['vocab'])
  ids, mask = vocab.encode([args.text], model.seq_len)
  words = text_data.tokenize(args.text)[:model.seq_len]
  weights = word_weights(model, variables, ids, mask)[0, :len(words)]
  (name, p), = predict.predict_texts(model, variables, data, [args.text], 1)[0]
  try:
    with open(args.output, 'w', encoding='utf-8') as f:
      f.write(render_text(words, weights, f'{model.__class__.__name__}: {name} ({p:.3f})'))
  except OSError as e:
    print(f'error: cannot write {args.output} ({e})', file=sys.stderr)
    return 1
  heaviest = ', '.join(f'{words[i]} {weights[i]:.3f}' for i in np.argsort(-weights)[:5])
  print(f'Wrote {args.output}: top-1 {name} ({p:.3f}); heaviest words: {heaviest}.')
  return 0


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
  parser.add_argument('image', nargs='?')
  parser.add_argument('--text', help='a text, for a text checkpoint')
  parser.add_argument('--output', required=True, help='PNG to write (HTML for --text)')
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
  if (args.text is None) == (args.image is None):
    print('error: give an image file or --text (one of them).', file=sys.stderr)
    return 1
  if args.text is not None:
    return _text_main(args, model, variables, data)
  if 'text' in data:
    print('error: this checkpoint is a text model; pass --text.', file=sys.stderr)
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
