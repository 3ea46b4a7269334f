"""The official recipe's augmentations (timm's meaning) as pure JAX functions of (image, key).

Per-image ops take one HWC float image in [0, 255] and are vmapped over a batch, so the same code
runs jit-compiled on the accelerator (the on-device path) or on the host CPU. Mixup/CutMix act on
a normalised batch inside the train step.
"""

import math
import re
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp

# --- Geometry ------------------------------------------------------------------------------------


def _affine(img, matrix, fill):
  """PIL-style inverse affine: output (x, y) samples input at matrix @ (x, y, 1); bilinear."""
  h, w, _ = img.shape
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                        indexing='ij')
  # PIL maps pixel centres: (x + .5, y + .5) -> source, then samples at source - .5.
  sx = matrix[0] * (xs + .5) + matrix[1] * (ys + .5) + matrix[2] - .5
  sy = matrix[3] * (xs + .5) + matrix[4] * (ys + .5) + matrix[5] - .5
  x0, y0 = jnp.floor(sx), jnp.floor(sy)
  out = 0.
  for dx in (0, 1):
    for dy in (0, 1):
      xi, yi = x0 + dx, y0 + dy
      wgt = (1 - jnp.abs(sx - xi)) * (1 - jnp.abs(sy - yi))
      inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
      pix = img[jnp.clip(yi, 0, h - 1).astype(int), jnp.clip(xi, 0, w - 1).astype(int)]
      out = out + (wgt * inside)[..., None] * pix + (wgt * ~inside)[..., None] * fill
  return out


def _rotate(img, degrees, fill):
  h, w, _ = img.shape
  a = -degrees * math.pi / 180  # PIL rotates counter-clockwise
  cx, cy = w / 2, h / 2
  c, s = jnp.cos(a), jnp.sin(a)
  m = jnp.stack([c, -s, cx - c * cx + s * cy, s, c, cy - s * cx - c * cy])
  return _affine(img, m, fill)


def _shear_x(img, f, fill):
  return _affine(img, jnp.stack([1., f, 0., 0., 1., 0.]), fill)


def _shear_y(img, f, fill):
  return _affine(img, jnp.stack([1., 0., 0., f, 1., 0.]), fill)


def _translate_x(img, pct, fill):
  return _affine(img, jnp.stack([1., 0., pct * img.shape[1], 0., 1., 0.]), fill)


def _translate_y(img, pct, fill):
  return _affine(img, jnp.stack([1., 0., 0., 0., 1., pct * img.shape[0]]), fill)


# --- Colour --------------------------------------------------------------------------------------


def _gray(img):
  return (img @ jnp.array([0.299, 0.587, 0.114]))[..., None]  # PIL's 'L' conversion


def _blend(degenerate, img, factor):
  return jnp.clip(degenerate + factor * (img - degenerate), 0, 255)


def _auto_contrast(img):
  lo, hi = img.min(axis=(0, 1)), img.max(axis=(0, 1))
  scale = jnp.where(hi > lo, 255. / jnp.maximum(hi - lo, 1e-6), 1.)
  return jnp.where(hi > lo, (img - lo) * scale, img)


def _equalize(img):
  """PIL ImageOps.equalize, per channel."""
  def channel(c):
    q = jnp.clip(jnp.round(c), 0, 255).astype(jnp.int32)
    hist = jnp.zeros(256, jnp.int32).at[q.ravel()].add(1)
    last = hist[255 - jnp.argmax(hist[::-1] > 0)]
    step = (hist.sum() - last) // 255
    lut = (jnp.cumsum(hist) - hist + step // 2) // jnp.maximum(step, 1)
    return jnp.where(step == 0, c, jnp.clip(lut[q], 0, 255).astype(c.dtype))
  return jnp.stack([channel(img[..., i]) for i in range(img.shape[-1])], -1)


def _sharpness(img, factor):
  k = jnp.array([[1., 1., 1.], [1., 5., 1.], [1., 1., 1.]]) / 13.
  pad = jnp.pad(img, ((1, 1), (1, 1), (0, 0)), mode='edge')
  smooth = sum(k[i, j] * pad[i:i + img.shape[0], j:j + img.shape[1]]
               for i in range(3) for j in range(3))
  border = jnp.zeros(img.shape[:2], bool).at[1:-1, 1:-1].set(True)[..., None]
  return _blend(jnp.where(border, jnp.round(smooth), img), img, factor)


def _posterize(img, bits):
  shift = 2.**(8 - bits)
  return jnp.floor(img / shift) * shift


def _solarize(img, thresh):
  return jnp.where(img >= thresh, 255 - img, img)


def _solarize_add(img, add):
  return jnp.where(img < 128, jnp.minimum(img + add, 255), img)


# --- RandAugment ---------------------------------------------------------------------------------

# timm's `inc1` op set (_RAND_INCREASING_TRANSFORMS): (name, op(img, level in [0, 1], sign, fill)).
RAND_INCREASING_OPS = (
    ('AutoContrast', lambda x, m, s, f: _auto_contrast(x)),
    ('Equalize', lambda x, m, s, f: _equalize(x)),
    ('Invert', lambda x, m, s, f: 255 - x),
    ('Rotate', lambda x, m, s, f: _rotate(x, s * 30. * m, f)),
    ('PosterizeIncreasing', lambda x, m, s, f: _posterize(x, 4 - jnp.floor(m * 4))),
    ('SolarizeIncreasing', lambda x, m, s, f: _solarize(x, 256 - jnp.floor(m * 256))),
    ('SolarizeAdd', lambda x, m, s, f: _solarize_add(x, jnp.floor(m * 110))),
    ('ColorIncreasing', lambda x, m, s, f: _blend(_gray(x), x, 1 + s * .9 * m)),
    ('ContrastIncreasing', lambda x, m, s, f: _blend(_gray(x).mean(), x, 1 + s * .9 * m)),
    ('BrightnessIncreasing', lambda x, m, s, f: _blend(0., x, 1 + s * .9 * m)),
    ('SharpnessIncreasing', lambda x, m, s, f: _sharpness(x, 1 + s * .9 * m)),
    ('ShearX', lambda x, m, s, f: _shear_x(x, s * .3 * m, f)),
    ('ShearY', lambda x, m, s, f: _shear_y(x, s * .3 * m, f)),
    ('TranslateXRel', lambda x, m, s, f: _translate_x(x, s * .45 * m, f)),
    ('TranslateYRel', lambda x, m, s, f: _translate_y(x, s * .45 * m, f)),
)


def parse_rand_augment(spec: str) -> Dict[str, Any]:
  """timm's config string, e.g. 'rand-m9-mstd0.5-inc1' -> magnitude 9, std 0.5, increasing ops."""
  parts = spec.split('-')
  if parts[0] != 'rand':
    raise ValueError(f"Unknown auto-augment '{spec}'; only timm's 'rand-...' RandAugment is "
                     'supported (or leave it empty for none).')
  out = dict(num_layers=2, magnitude=10., magnitude_std=0., magnitude_max=10., increasing=False)
  for p in parts[1:]:
    key, value = re.match(r'([a-z]+)([\d.]*)', p).groups()
    if key == 'm':
      out['magnitude'] = float(value)
    elif key == 'n':
      out['num_layers'] = int(value)
    elif key == 'mstd':
      out['magnitude_std'] = float(value)
    elif key == 'mmax':
      out['magnitude_max'] = float(value)
    elif key == 'inc':
      out['increasing'] = bool(int(value))
    else:
      raise ValueError(f"Unknown RandAugment option '{p}' in '{spec}'.")
  if not out['increasing']:
    raise ValueError(f"'{spec}': only the increasing op set (inc1) of the official recipe is "
                     'implemented.')
  return out


def rand_augment(img, key, *, num_layers=2, magnitude=9., magnitude_std=.5, magnitude_max=10.,
                 fill=(128., 128., 128.), **_):
  """timm RandAugment: `num_layers` ops drawn with replacement, each applied with prob 0.5 at a
  magnitude ~ N(magnitude, magnitude_std) clipped to [0, magnitude_max], random sign."""
  fill = jnp.asarray(fill, jnp.float32)
  for k in jax.random.split(key, num_layers):
    k_op, k_apply, k_mag, k_sign = jax.random.split(k, 4)
    m = magnitude + magnitude_std * jax.random.normal(k_mag) if magnitude_std else magnitude
    level = jnp.clip(m, 0., magnitude_max) / 10.
    sign = jnp.where(jax.random.bernoulli(k_sign), 1., -1.)
    op = jax.random.randint(k_op, (), 0, len(RAND_INCREASING_OPS))
    out = jax.lax.switch(op, [lambda x, f=f: f(x, level, sign, fill)
                              for _, f in RAND_INCREASING_OPS], img)
    img = jnp.where(jax.random.bernoulli(k_apply, 0.5), jnp.clip(jnp.round(out), 0, 255), img)
  return img


# --- Crops, flips, erasing -----------------------------------------------------------------------


def crop_params(key, height, width, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), attempts=10):
  """timm's RandomResizedCrop.get_params: (top, left, h, w); 10 tries, then a centre crop."""
  area = height * width
  ka, kr, ki, kj = jax.random.split(key, 4)
  target = area * jax.random.uniform(ka, (attempts,), minval=scale[0], maxval=scale[1])
  aspect = jnp.exp(jax.random.uniform(kr, (attempts,), minval=math.log(ratio[0]),
                                      maxval=math.log(ratio[1])))
  w = jnp.round(jnp.sqrt(target * aspect))
  h = jnp.round(jnp.sqrt(target / aspect))
  ok = (w <= width) & (h <= height) & (w > 0) & (h > 0)
  first = jnp.argmax(ok)
  in_ratio = width / height
  fw = width if ratio[0] <= in_ratio <= ratio[1] else (
      width if in_ratio < ratio[0] else round(height * ratio[1]))
  fh = height if ratio[0] <= in_ratio <= ratio[1] else (
      round(width / ratio[0]) if in_ratio < ratio[0] else height)
  h = jnp.where(ok.any(), h[first], fh)
  w = jnp.where(ok.any(), w[first], fw)
  top = jnp.where(ok.any(), jnp.floor(jax.random.uniform(ki) * (height - h + 1)), (height - fh) // 2)
  left = jnp.where(ok.any(), jnp.floor(jax.random.uniform(kj) * (width - w + 1)), (width - fw) // 2)
  return top, left, h, w


def random_resized_crop(img, key, size: Tuple[int, int], scale, ratio, interpolation='random'):
  """Crop with timm's parameters, resized to `size`; 'random' picks bilinear or bicubic."""
  kp, ki = jax.random.split(key)
  top, left, h, w = crop_params(kp, img.shape[0], img.shape[1], scale, ratio)
  sy, sx = size[0] / h, size[1] / w
  resize = lambda method: jax.image.scale_and_translate(
      img, (size[0], size[1], img.shape[2]), (0, 1), jnp.stack([sy, sx]),
      jnp.stack([-top * sy, -left * sx]), method=method, antialias=True)
  if interpolation == 'random':
    out = jnp.where(jax.random.bernoulli(ki), resize('linear'), resize('cubic'))
  else:
    out = resize({'bilinear': 'linear', 'bicubic': 'cubic'}[interpolation])
  return jnp.clip(jnp.round(out), 0, 255)


def random_flip(img, key, prob=0.5):
  return jnp.where(jax.random.bernoulli(key, prob), img[:, ::-1], img)


def random_erasing(img, key, prob=0.25, mode='pixel', area=(0.02, 1 / 3), log_ratio=(
    math.log(0.3), math.log(1 / 0.3)), attempts=10):
  """timm RandomErasing (max_count 1) on a normalised image: one box of N(0, 1) noise ('pixel'),
  a per-box colour ('rand') or zeros ('const')."""
  height, width, c = img.shape
  kp, ka, kr, kt, kl, kn = jax.random.split(key, 6)
  target = height * width * jax.random.uniform(ka, (attempts,), minval=area[0], maxval=area[1])
  aspect = jnp.exp(jax.random.uniform(kr, (attempts,), minval=log_ratio[0], maxval=log_ratio[1]))
  h = jnp.round(jnp.sqrt(target * aspect))
  w = jnp.round(jnp.sqrt(target / aspect))
  ok = (w < width) & (h < height)
  i = jnp.argmax(ok)
  h, w = h[i], w[i]
  top = jnp.floor(jax.random.uniform(kt) * (height - h + 1))
  left = jnp.floor(jax.random.uniform(kl) * (width - w + 1))
  ys, xs = jnp.arange(height)[:, None, None], jnp.arange(width)[None, :, None]
  box = (ys >= top) & (ys < top + h) & (xs >= left) & (xs < left + w)
  noise = {'pixel': jax.random.normal(kn, img.shape), 'rand': jax.random.normal(kn, (1, 1, c)),
           'const': jnp.zeros((1, 1, c))}[mode]
  erase = jax.random.bernoulli(kp, prob) & ok.any()
  return jnp.where(erase & box, noise, img)


def normalize(img, mean, std):
  return (img / 255. - jnp.asarray(mean)) / jnp.asarray(std)


# --- The per-image recipe and Mixup/CutMix -------------------------------------------------------


def train_transform(images, key, aug, *, crop: bool):
  """A batch of uint8-valued HWC images -> normalised float32, every per-image op of the recipe.

  `crop`: also random-resized-crop and flip here (fixed-size inputs, on-device path); otherwise the
  host pipeline has cropped and flipped already.
  """
  size = tuple(aug.img_size) if isinstance(aug.img_size, (tuple, list)) else (aug.img_size,) * 2
  ra = parse_rand_augment(aug.auto_augment) if aug.auto_augment else None
  fill = tuple(min(255., round(255 * m)) for m in aug.mean)

  def one(img, k):
    k_crop, k_flip, k_ra, k_erase = jax.random.split(k, 4)
    img = img.astype(jnp.float32)
    if crop:
      img = random_resized_crop(img, k_crop, size, tuple(aug.scale), tuple(aug.ratio),
                                aug.train_interpolation)
      img = random_flip(img, k_flip, aug.hflip)
    if ra:
      img = rand_augment(img, k_ra, fill=fill, **ra)
    img = normalize(img, aug.mean, aug.std)
    if aug.reprob:
      img = random_erasing(img, k_erase, aug.reprob, aug.remode)
    return img

  return jax.vmap(one)(images, jax.random.split(key, images.shape[0]))


def mixup_cutmix(images, labels, key, *, num_classes, smoothing, mixup_alpha, cutmix_alpha,
                 prob=1.0, switch_prob=0.5, enabled=True):
  """timm Mixup in 'batch' mode with correct_lam: one lambda per batch, the batch mixed with its
  reverse. Returns images and soft targets (label smoothing included), rows summing to 1."""
  k_do, k_switch, k_mix, k_cut, ky, kx = jax.random.split(key, 6)
  off = smoothing / num_classes
  onehot = jax.nn.one_hot(labels, num_classes) * (1 - smoothing) + off
  if not (mixup_alpha or cutmix_alpha):
    return images, onehot
  use_cut = (jax.random.uniform(k_switch) < switch_prob) if (mixup_alpha and cutmix_alpha) else (
      jnp.asarray(bool(cutmix_alpha)))
  lam_mix = jax.random.beta(k_mix, mixup_alpha, mixup_alpha) if mixup_alpha else 1.
  lam_cut = jax.random.beta(k_cut, cutmix_alpha, cutmix_alpha) if cutmix_alpha else 1.
  do = jnp.asarray(enabled) & (jax.random.uniform(k_do) < prob)
  lam = jnp.where(use_cut, lam_cut, lam_mix)
  # CutMix box: side ratio sqrt(1 - lam), centre uniform, clipped; lam corrected to the area.
  _, h, w, _ = images.shape
  ratio = jnp.sqrt(1 - lam)
  cut_h, cut_w = jnp.floor(h * ratio), jnp.floor(w * ratio)
  cy = jax.random.randint(ky, (), 0, h)
  cx = jax.random.randint(kx, (), 0, w)
  yl, yh = jnp.clip(cy - cut_h // 2, 0, h), jnp.clip(cy + cut_h // 2, 0, h)
  xl, xh = jnp.clip(cx - cut_w // 2, 0, w), jnp.clip(cx + cut_w // 2, 0, w)
  ys, xs = jnp.arange(h)[:, None, None], jnp.arange(w)[None, :, None]
  box = (ys >= yl) & (ys < yh) & (xs >= xl) & (xs < xh)
  lam_cut_corrected = 1 - (yh - yl) * (xh - xl) / (h * w)
  flipped = images[::-1]
  cut_images = jnp.where(box[None], flipped, images)
  mix_images = images * lam + flipped * (1 - lam)
  lam = jnp.where(do, jnp.where(use_cut, lam_cut_corrected, lam), 1.)
  images = jnp.where(do, jnp.where(use_cut, cut_images, mix_images), images)
  return images, onehot * lam + onehot[::-1] * (1 - lam)
