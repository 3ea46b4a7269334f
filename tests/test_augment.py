"""Each augmentation of the official recipe: invariants and statistics."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from compact_flax import augment
from configs import common


def _images(n=64, size=32, seed=0):
  return jax.random.randint(jax.random.key(seed), (n, size, size, 3), 0, 256).astype(jnp.float32)


def test_mixup_cutmix_targets_sum_to_one_and_cutmix_weight_is_the_pasted_area():
  n = 16
  images = jnp.broadcast_to(jnp.arange(n, dtype=jnp.float32)[:, None, None, None], (n, 32, 32, 3))
  labels = jnp.arange(n) % 10
  for seed in range(20):
    out, targets = augment.mixup_cutmix(images, labels, jax.random.key(seed), num_classes=10,
                                        smoothing=0.0, mixup_alpha=0.8, cutmix_alpha=1.0,
                                        switch_prob=1.0)  # CutMix only
    np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
    own = (out[0, ..., 0] == 0).mean()  # pixels of image 0 still its own
    if labels[0] != labels[-1]:
      np.testing.assert_allclose(targets[0, labels[0]], own, rtol=1e-6)
  _, targets = augment.mixup_cutmix(images, labels, jax.random.key(0), num_classes=10,
                                    smoothing=0.1, mixup_alpha=0.8, cutmix_alpha=1.0)
  np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
  assert targets.min() >= 0.01 - 1e-7  # smoothing: off value 0.1 / 10
  same, t = augment.mixup_cutmix(images, labels, jax.random.key(0), num_classes=10, smoothing=0.0,
                                 mixup_alpha=0.8, cutmix_alpha=1.0, enabled=False)
  np.testing.assert_array_equal(same, images)
  np.testing.assert_array_equal(t, jax.nn.one_hot(labels, 10))


def test_every_rand_augment_op_keeps_shape_dtype_and_range():
  img = _images(1)[0]
  for name in augment.OP_NAMES:
    for level in (0.0, 0.5, 1.0):
      out = augment.apply_op(name, img, level, -1.0, jnp.array([125., 123., 114.]),
                             jnp.asarray(level > 0.4))
      chex.assert_shape(out, img.shape)
      assert out.dtype == jnp.float32, name
      assert float(out.min()) >= 0 and float(out.max()) <= 255, name


def test_rand_augment_is_reproducible_from_a_seed_and_changes_images():
  img = _images(8)
  ra = augment.parse_rand_augment('rand-m9-mstd0.5-inc1')
  assert ra == dict(num_layers=2, magnitude=9.0, magnitude_std=0.5, magnitude_max=10.0,
                    increasing=True)
  f = jax.jit(jax.vmap(lambda x, k: augment.rand_augment(x, k, **ra)))
  keys = jax.random.split(jax.random.key(3), 8)
  a, b = f(img, keys), f(img, keys)
  np.testing.assert_array_equal(a, b)
  assert a.dtype == img.dtype and a.shape == img.shape
  assert float(a.min()) >= 0 and float(a.max()) <= 255
  np.testing.assert_array_equal(a, jnp.round(a))
  assert not np.array_equal(a, img)
  with pytest.raises(ValueError, match='Unknown auto-augment'):
    augment.parse_rand_augment('v0')


def test_colour_jitter_keeps_whole_values_in_range_and_zero_strength_is_none():
  img = _images(8)
  jitter = jax.jit(jax.vmap(augment.color_jitter, in_axes=(0, 0, None)), static_argnums=2)
  keys = jax.random.split(jax.random.key(4), 8)
  out = jitter(img, keys, 0.4)
  chex.assert_equal_shape([out, img])
  np.testing.assert_array_equal(out, jnp.round(out))
  assert float(out.min()) >= 0 and float(out.max()) <= 255
  assert not np.array_equal(out, img)
  np.testing.assert_array_equal(jitter(img, keys, 0.0), img)


def test_equalize_matches_pil():
  pil = pytest.importorskip('PIL.Image')
  from PIL import ImageOps
  img = np.asarray(_images(1, seed=5)[0] // 2 + 40).astype(np.uint8)
  ref = np.asarray(ImageOps.equalize(pil.fromarray(img)))
  np.testing.assert_array_equal(np.asarray(augment._equalize(jnp.asarray(img, jnp.float32))), ref)


def test_random_resized_crop_params_respect_scale_and_ratio():
  keys = jax.random.split(jax.random.key(0), 4000)
  top, left, h, w = jax.vmap(lambda k: augment.crop_params(k, 32, 32, (0.08, 1.0)))(keys)
  area = h * w / 1024
  assert float(area.min()) >= 0.08 * 0.8 and float(area.max()) <= 1.0
  assert float((w / h).min()) >= 3 / 4 * 0.8 and float((w / h).max()) <= 4 / 3 * 1.25
  assert bool(((top >= 0) & (top + h <= 32) & (left >= 0) & (left + w <= 32)).all())
  top, left, h, w = jax.vmap(lambda k: augment.crop_params(k, 32, 32, (0.8, 1.0)))(keys)
  # timm's get_params, restated in plain Python: rejection biases the area below the scale's mean.
  rng, areas = np.random.default_rng(0), []
  for _ in range(4000):
    for _ in range(10):
      t = 1024 * rng.uniform(0.8, 1.0)
      ar = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
      cw, ch = round(np.sqrt(t * ar)), round(np.sqrt(t / ar))
      if cw <= 32 and ch <= 32:
        areas.append(cw * ch / 1024)
        break
    else:
      areas.append(1.0)
  np.testing.assert_allclose(float((h * w / 1024).mean()), np.mean(areas), atol=0.005)


def test_random_erasing_probability_and_area():
  imgs = jnp.full((2000, 32, 32, 3), 100.0)
  out = jax.vmap(lambda x, k: augment.random_erasing(x, k, 0.25))(
      imgs, jax.random.split(jax.random.key(1), 2000))
  erased = (out != 100.0).any(-1).mean((1, 2))
  np.testing.assert_allclose(float((erased > 0).mean()), 0.25, atol=0.03)
  hit = erased[erased > 0]
  assert float(hit.min()) >= 0.02 * 0.5 and float(hit.max()) <= 1 / 3 * 1.3


def test_host_and_device_crops_agree_in_distribution():
  tf = pytest.importorskip('tensorflow')
  from compact_flax import input_pipeline
  aug = common.get_config().aug
  aug.scale = (0.08, 1.0)
  # A ramp image: the mean of the cropped output measures where and how big the crop was.
  ramp = np.tile(np.linspace(0, 255, 32, dtype=np.float32)[None, :, None], (32, 1, 3))
  host = np.stack([input_pipeline.tf_random_resized_crop(tf.constant(ramp.astype(np.uint8)),
                                                         tf.constant([7, i], tf.int64), aug).numpy()
                   for i in range(300)]).astype(np.float32)
  dev = jax.vmap(lambda k: augment.random_flip(augment.random_resized_crop(
      jnp.asarray(ramp), k[0], (32, 32), aug.scale, aug.ratio), k[1]))(
          jax.random.split(jax.random.key(0), (300, 2)))
  rng = np.random.default_rng(0)  # PIL, for in-memory images of several sizes
  pil = np.stack([input_pipeline.pil_random_resized_crop(ramp.astype(np.uint8), rng, aug)
                  for _ in range(300)]).astype(np.float32)
  for stat in (lambda x: x.mean((1, 2, 3)), lambda x: x.std((1, 2, 3))):
    for other in (dev, pil):
      a, b = np.asarray(stat(host)), np.asarray(stat(other))
      assert abs(a.mean() - b.mean()) < 0.1 * a.std() + 3, (a.mean(), b.mean())
      assert abs(a.std() - b.std()) < 0.25 * a.std(), (a.std(), b.std())


def test_the_step_recipe_keeps_pixels_until_the_mix_then_normalises():
  aug = ml_collections.ConfigDict(common.get_config().aug.to_dict())
  aug.reprob = 0.25
  recipe = augment.DeviceAugment(aug, on_device=True, crop=True)
  pixels = jax.jit(recipe.before)(_images(16).astype(jnp.uint8), jax.random.key(0))
  chex.assert_shape(pixels, (16, 32, 32, 3))
  assert pixels.dtype == jnp.float32
  np.testing.assert_array_equal(pixels, np.round(pixels))  # whole levels, as timm's uint8
  assert float(pixels.min()) >= 0 and float(pixels.max()) <= 255
  out = jax.jit(recipe.after)(pixels, jax.random.key(1))
  chex.assert_tree_all_finite(out)
  assert abs(float(out.mean())) < 3
