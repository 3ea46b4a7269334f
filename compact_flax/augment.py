"""The official recipe's augmentations (timm's meaning) as pure JAX functions of (image, key).

Per-image ops take one HWC float image in [0, 255] and are vmapped over a batch, so the same code
runs jit-compiled on the accelerator (the on-device path) or on the host CPU. Mixup/CutMix,
normalisation and random erasing run inside the train step, in the official loader's order.
"""

import dataclasses
import math
import re
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp

from compact_flax import kernels

# --- Geometry ------------------------------------------------------------------------------------


def _cubic_weights(d):
  """PIL's BICUBIC macro (a = -1) as the weights of the taps at -1, 0, 1 and 2."""
  return [-d + 2 * d**2 - d**3, 1 - 2 * d**2 + d**3, d + d**2 - d**3, -d**2 + d**3]


def _affine(img, matrix, fill, bicubic):
  """PIL's `Image.transform(size, AFFINE, matrix, resample, fillcolor)` on an 8-bit image.

  Output pixel (x, y) samples the input at `matrix @ (x + .5, y + .5, 1)`. A sample point outside
  the image takes `fill`; one inside interpolates its neighbours, clamped to the edge (bilinear,
  or PIL's bicubic kernel with a = -1), and the result is truncated to an integer, as PIL does.
  Both interpolations use the same 4 x 4 taps (bilinear weighs the outer ones 0), so a traced
  `bicubic` costs one resampling, not two.
  """
  h, w, _ = img.shape
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) + .5,
                        jnp.arange(w, dtype=jnp.float32) + .5, indexing='ij')
  sx = matrix[0] * xs + matrix[1] * ys + matrix[2]
  sy = matrix[3] * xs + matrix[4] * ys + matrix[5]
  inside = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
  fx, fy = sx - .5, sy - .5
  x0, y0 = jnp.floor(fx), jnp.floor(fy)

  def weights(d):  # taps at -1, 0, 1, 2
    return [jnp.where(bicubic, c, l) for c, l in zip(_cubic_weights(d), [0., 1 - d, d, 0.])]

  out = 0.
  for i, wy in zip((-1, 0, 1, 2), weights(fy - y0)):
    row = jnp.clip(y0 + i, 0, h - 1).astype(jnp.int32)
    for j, wx in zip((-1, 0, 1, 2), weights(fx - x0)):
      col = jnp.clip(x0 + j, 0, w - 1).astype(jnp.int32)
      out = out + (wy * wx)[..., None] * img[row, col]
  return jnp.where(inside[..., None], jnp.floor(jnp.clip(out, 0, 255)), fill)


def _rotation(shape, degrees):
  """PIL's `Image.rotate(degrees)` as an affine matrix: counter-clockwise about the centre."""
  h, w = shape[:2]
  a = -degrees * math.pi / 180
  c, s = jnp.cos(a), jnp.sin(a)
  cx, cy = w / 2, h / 2
  return jnp.stack([c, s, c * -cx + s * -cy + cx, -s, c, -s * -cx + c * -cy + cy])


# The geometric ops of timm's RandAugment as matrices: name -> (image shape, argument) -> matrix.
MATRICES = {
    'Rotate': _rotation,
    'ShearX': lambda shape, f: jnp.stack([1., f, 0., 0., 1., 0.]),
    'ShearY': lambda shape, f: jnp.stack([1., 0., 0., f, 1., 0.]),
    'TranslateXRel': lambda shape, pct: jnp.stack([1., 0., pct * shape[1], 0., 1., 0.]),
    'TranslateYRel': lambda shape, pct: jnp.stack([1., 0., 0., 0., 1., pct * shape[0]]),
}


def geometric_op(name: str, img, arg, fill, bicubic):
  """One of timm's geometric ops (`MATRICES`) on an image, with its argument (degrees, shear
  factor or fraction of the size), as timm's functions call PIL."""
  return _affine(img, MATRICES[name](img.shape, arg), fill, bicubic)


# --- Colour --------------------------------------------------------------------------------------


def _gray(img):
  """PIL's 'L' conversion of an 8-bit RGB image, in its fixed-point arithmetic."""
  rgb = img.astype(jnp.int32)
  return ((rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
          ).astype(img.dtype)[..., None]


def _blend(degenerate, img, factor):
  """PIL's `Image.blend(degenerate, img, factor)` on 8-bit images: clipped, then truncated."""
  return jnp.floor(jnp.clip(degenerate + factor * (img - degenerate), 0, 255))


# PIL's ImageEnhance Brightness, Contrast and Color (saturation) by a factor.
def _brightness(img, factor):
  return _blend(0., img, factor)


def _contrast(img, factor):
  return _blend(jnp.floor(_gray(img).mean() + .5), img, factor)


def _saturation(img, factor):
  return _blend(_gray(img), img, factor)


def color_jitter(img, key, strength: float):
  """torchvision's `ColorJitter(strength, strength, strength)` through PIL, which timm's training
  transform adds when RandAugment is off: brightness, contrast and saturation factors each uniform
  in [max(0, 1 - strength), 1 + strength], the three applied in a random order."""
  k_order, k_factor = jax.random.split(key)
  factors = jax.random.uniform(k_factor, (3,), minval=max(0., 1. - strength),
                               maxval=1. + strength)
  ops = (_brightness, _contrast, _saturation)
  for i in jax.random.permutation(k_order, len(ops)):
    img = jax.lax.switch(i, [lambda x, op=op, j=j: op(x, factors[j])
                             for j, op in enumerate(ops)], img)
  return img


def _auto_contrast(img):
  """PIL's ImageOps.autocontrast per channel: `int(x * scale + offset)`. PIL computes in float64,
  which lands one below an exact integer for some (lo, hi, x); this float32 version can differ
  there by one level."""
  lo, hi = img.min(axis=(0, 1)), img.max(axis=(0, 1))
  scale = 255. / jnp.maximum(hi - lo, 1.)
  stretched = jnp.clip(jnp.floor(img * scale - lo * scale), 0, 255)
  return jnp.where(hi > lo, stretched, img)


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

# timm's `inc1` op set (_RAND_INCREASING_TRANSFORMS): (name, the op's argument from the level in
# [0, 1] and the sign) for the geometric ops, (name, op(img, level, sign)) for the others.
GEOMETRIC_ARGS = {
    'Rotate': lambda m, s: s * 30. * m,
    'ShearX': lambda m, s: s * .3 * m,
    'ShearY': lambda m, s: s * .3 * m,
    'TranslateXRel': lambda m, s: s * .45 * m,
    'TranslateYRel': lambda m, s: s * .45 * m,
}
PIXEL_OPS = {
    'AutoContrast': lambda x, m, s: _auto_contrast(x),
    'Equalize': lambda x, m, s: _equalize(x),
    'Invert': lambda x, m, s: 255 - x,
    'PosterizeIncreasing': lambda x, m, s: _posterize(x, 4 - jnp.floor(m * 4)),
    'SolarizeIncreasing': lambda x, m, s: _solarize(x, 256 - jnp.floor(m * 256)),
    'SolarizeAdd': lambda x, m, s: _solarize_add(x, jnp.floor(m * 110)),
    'ColorIncreasing': lambda x, m, s: _saturation(x, 1 + s * .9 * m),
    'ContrastIncreasing': lambda x, m, s: _contrast(x, 1 + s * .9 * m),
    'BrightnessIncreasing': lambda x, m, s: _brightness(x, 1 + s * .9 * m),
    'SharpnessIncreasing': lambda x, m, s: _sharpness(x, 1 + s * .9 * m),
}
OP_NAMES = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'PosterizeIncreasing',
            'SolarizeIncreasing', 'SolarizeAdd', 'ColorIncreasing', 'ContrastIncreasing',
            'BrightnessIncreasing', 'SharpnessIncreasing', 'ShearX', 'ShearY', 'TranslateXRel',
            'TranslateYRel')  # timm's order


def apply_op(name: str, img, level, sign, fill, bicubic):
  """One RandAugment op by name at a level in [0, 1] with a sign (+1 or -1)."""
  if name in GEOMETRIC_ARGS:
    return geometric_op(name, img, GEOMETRIC_ARGS[name](level, sign), fill, bicubic)
  return PIXEL_OPS[name](img, level, sign)



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
                 fill=(128., 128., 128.), interpolation='random', **_):
  """timm RandAugment: `num_layers` ops drawn with replacement, each applied with prob 0.5 at a
  magnitude ~ N(magnitude, magnitude_std) clipped to [0, magnitude_max], random sign. The
  geometric ops interpolate bilinearly or bicubically, drawn per op when `interpolation` is
  'random' (timm's default), as timm does.

  Under `vmap` a drawn op cannot pick a branch per image, so every pixel op is computed for every
  image; the five geometric ops share one resampling, with the drawn op's matrix.
  """
  fill = jnp.asarray(fill, jnp.float32)
  identity = jnp.array([1., 0., 0., 0., 1., 0.])
  geometric = jnp.asarray([name in GEOMETRIC_ARGS for name in OP_NAMES])
  for k in jax.random.split(key, num_layers):
    k_op, k_apply, k_mag, k_sign, k_interp = jax.random.split(k, 5)
    m = magnitude + magnitude_std * jax.random.normal(k_mag) if magnitude_std else magnitude
    level = jnp.clip(m, 0., magnitude_max) / 10.
    sign = jnp.where(jax.random.bernoulli(k_sign), 1., -1.)
    bicubic = (jax.random.bernoulli(k_interp) if interpolation == 'random' else
               jnp.asarray(interpolation == 'bicubic'))
    op = jax.random.randint(k_op, (), 0, len(OP_NAMES))
    pixels = jax.lax.switch(op, [
        (lambda x: x) if name in GEOMETRIC_ARGS else
        (lambda x, f=PIXEL_OPS[name]: f(x, level, sign)) for name in OP_NAMES], img)
    matrix = jax.lax.switch(op, [
        (lambda name=name: MATRICES[name](img.shape, GEOMETRIC_ARGS[name](level, sign)))
        if name in GEOMETRIC_ARGS else (lambda: identity) for name in OP_NAMES])
    out = jnp.where(geometric[op], _affine(img, matrix, fill, bicubic), pixels)
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


# --- The per-image recipe, Mixup/CutMix, and their order ---------------------------------------
#
# The official loader (timm's, with its prefetcher) crops, flips and RandAugments each image in
# uint8, mixes the batch in its collate (in uint8, rounding), then normalises and erases on the
# GPU. `before_mix`, `mixup_cutmix` and `after_mix` are those three stages.


def _size(aug) -> Tuple[int, int]:
  return tuple(aug.img_size) if isinstance(aug.img_size, (tuple, list)) else (aug.img_size,) * 2


def changes_pixels(aug) -> bool:
  """Whether the per-image stage does more than crop and flip: RandAugment, or without it the
  colour jitter (timm's training transform applies `color_jitter` only without RandAugment)."""
  return bool(aug.auto_augment or aug.color_jitter)


def before_mix(images, key, aug, *, crop: bool):
  """A batch of uint8-valued HWC images -> float32 pixel values in [0, 255]: random-resized crop
  and flip (when `crop`: fixed-size inputs on the device; otherwise the host pipeline has done
  them), then RandAugment, or colour jitter where RandAugment is off.

  RandAugment runs one image at a time (`lax.map`) except on GPUs: a drawn op then runs alone,
  where under `vmap` every op would run for every image (on XLA's TPU compiler 30x the memory
  traffic, on CPU 2.6x the time: docs/notes.md).
  """
  ra = parse_rand_augment(aug.auto_augment) if aug.auto_augment else None
  fill = tuple(min(255., round(255 * m)) for m in aug.mean)
  keys = jax.vmap(lambda k: jax.random.split(k, 3))(jax.random.split(key, images.shape[0]))
  images = images.astype(jnp.float32)
  if crop:
    def crop_and_flip(img, k):
      img = random_resized_crop(img, k[0], _size(aug), tuple(aug.scale), tuple(aug.ratio),
                                aug.train_interpolation)
      return random_flip(img, k[1], aug.hflip)
    images = jax.vmap(crop_and_flip)(images, keys)
  if ra:
    one = lambda img, k: rand_augment(img, k[2], fill=fill, interpolation=aug.train_interpolation,
                                      **ra)
    if kernels.platform() == 'gpu':
      images = jax.vmap(one)(images, keys)
    else:
      images = jax.lax.map(lambda pair: one(*pair), (images, keys))
  elif aug.color_jitter:
    images = jax.vmap(lambda img, k: color_jitter(img, k[2], aug.color_jitter))(images, keys)
  return images


def after_mix(images, key, aug):
  """Pixel values in [0, 255] -> the model's input: normalisation, then random erasing per
  image."""
  images = normalize(images, aug.mean, aug.std)
  if not aug.reprob:
    return images
  erase = lambda img, k: random_erasing(img, k, aug.reprob, aug.remode)
  return jax.vmap(erase)(images, jax.random.split(key, images.shape[0]))


def on_device(value, platform: Optional[str] = None) -> bool:
  """`aug.on_device`: True, False, or 'auto': in the jitted step on GPUs and TPUs (a host's cores
  cannot feed them), on the host on CPUs (where it is faster: docs/performance.md) for `platform`
  (default: JAX's)."""
  # A command line's --config.aug.on_device=True arrives as the string 'True' (the field holds
  # 'auto', a string).
  value = {'true': True, 'false': False}.get(value.lower(), value) if isinstance(value, str) else value
  if value == 'auto':
    return (platform or jax.default_backend()) != 'cpu'
  if not isinstance(value, bool):
    raise ValueError(f"aug.on_device is {value!r}; it must be True, False or 'auto'.")
  return value


@dataclasses.dataclass(frozen=True)
class DeviceAugment:
  """The recipe's part inside the jitted train step, around Mixup/CutMix.

  `before` (crop and flip for fixed-size images, RandAugment) runs there when `on_device`;
  otherwise the host pipeline ran it. `after` (normalisation, erasing) always runs there, after
  the mix, as in the official loader.
  """
  aug: Any
  on_device: bool
  crop: bool = False

  def before(self, images, key):
    if not self.on_device:
      return images.astype(jnp.float32)
    return before_mix(images, key, self.aug, crop=self.crop)

  def after(self, images, key):
    return after_mix(images, key, self.aug)


def _mix_params(key, batch: int, *, mode: str, mixup_alpha, cutmix_alpha, prob, switch_prob,
                enabled):
  """timm's `_params_per_batch` / `_params_per_elem`: (lam, use_cutmix), each of shape (batch,).
  'batch' draws one pair for all; 'elem' one per image; 'pair' one per pair (i, batch - 1 - i)."""
  n = {'batch': 1, 'elem': batch, 'pair': batch // 2}[mode]
  k_do, k_switch, k_mix, k_cut = jax.random.split(key, 4)
  use_cut = ((jax.random.uniform(k_switch, (n,)) < switch_prob) if (mixup_alpha and cutmix_alpha)
             else jnp.full((n,), bool(cutmix_alpha)))
  lam_mix = jax.random.beta(k_mix, mixup_alpha, mixup_alpha, (n,)) if mixup_alpha else 1.
  lam_cut = jax.random.beta(k_cut, cutmix_alpha, cutmix_alpha, (n,)) if cutmix_alpha else 1.
  do = jnp.asarray(enabled) & (jax.random.uniform(k_do, (n,)) < prob)
  lam = jnp.where(do, jnp.where(use_cut, lam_cut, lam_mix), 1.)
  if mode == 'pair':  # element batch - 1 - i takes pair i's parameters
    lam, use_cut = (jnp.concatenate([x, x[::-1]]) for x in (lam, use_cut))
  return jnp.broadcast_to(lam, (batch,)), jnp.broadcast_to(use_cut, (batch,))


def cutmix_boxes(key, lam, height: int, width: int):
  """timm's `rand_bbox` per image: side ratio sqrt(1 - lam), centre uniform, clipped.
  Returns (y_lo, y_hi, x_lo, x_hi), each of lam's shape."""
  ky, kx = jax.random.split(key)
  ratio = jnp.sqrt(1 - lam)
  cut_h, cut_w = jnp.floor(height * ratio), jnp.floor(width * ratio)
  cy = jax.random.randint(ky, lam.shape, 0, height)
  cx = jax.random.randint(kx, lam.shape, 0, width)
  return (jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height),
          jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width))


def mix_with_params(images, lam, use_cut, boxes, *, round_pixels: bool):
  """Mixes image i with image batch - 1 - i: CutMix pastes its box, Mixup blends with weight
  `lam`. Returns (images, lam corrected to the pasted area, as timm's correct_lam)."""
  b, h, w, _ = images.shape
  yl, yh, xl, xh = (x.reshape(b, 1, 1, 1) for x in boxes)
  ys, xs = jnp.arange(h)[None, :, None, None], jnp.arange(w)[None, None, :, None]
  in_box = (ys >= yl) & (ys < yh) & (xs >= xl) & (xs < xh)
  flipped = images[::-1]
  cut = jnp.where(in_box, flipped, images)
  lam4 = lam.reshape(b, 1, 1, 1)
  blended = images * lam4 + flipped * (1 - lam4)
  if round_pixels:  # timm's collate mixes uint8 images and rounds (np.rint: half to even)
    blended = jnp.round(blended)
  use4 = use_cut.reshape(b, 1, 1, 1)
  mixed = jnp.where(lam4 < 1, jnp.where(use4, cut, blended), images)
  area = (boxes[1] - boxes[0]) * (boxes[3] - boxes[2])
  lam = jnp.where(use_cut & (lam < 1), 1 - area / (h * w), lam)
  return mixed, lam


def mixup_cutmix(images, labels, key, *, num_classes, smoothing, mixup_alpha, cutmix_alpha,
                 prob=1.0, switch_prob=0.5, mode='batch', enabled=True, round_pixels=False):
  """timm's Mixup/CutMix with correct_lam, in mode 'batch' (one lambda for the batch), 'elem' (one
  per image) or 'pair' (one per mirrored pair); image i mixes with image batch - 1 - i. Returns
  images and soft targets (label smoothing included), rows summing to 1. `round_pixels` rounds
  blended pixel values, as the official collate does in uint8."""
  off = smoothing / num_classes
  onehot = jax.nn.one_hot(labels, num_classes) * (1 - smoothing) + off
  if not (mixup_alpha or cutmix_alpha):
    return images, onehot
  k_params, k_box = jax.random.split(key)
  b, h, w, _ = images.shape
  lam, use_cut = _mix_params(k_params, b, mode=mode, mixup_alpha=mixup_alpha,
                             cutmix_alpha=cutmix_alpha, prob=prob, switch_prob=switch_prob,
                             enabled=enabled)
  boxes = cutmix_boxes(k_box, lam if mode != 'batch' else lam[:1], h, w)
  if mode == 'pair':
    boxes = tuple(jnp.concatenate([x[:b // 2], x[:b // 2][::-1]]) for x in boxes)
  boxes = tuple(jnp.broadcast_to(x, (b,)) for x in boxes)
  images, lam = mix_with_params(images, lam, use_cut, boxes, round_pixels=round_pixels)
  return images, onehot * lam[:, None] + onehot[::-1] * (1 - lam[:, None])
