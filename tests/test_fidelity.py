"""The recipe against values timm 0.4.12 itself produced (tests/fixtures/timm_reference.npz, written
by tests/fixtures/make_timm_reference.py where timm is installed; timm is not needed here), and
our train step against the official trainer's first steps (tests/fixtures/official_steps.npz,
written by tests/fixtures/make_official_steps.py)."""

import functools
import importlib
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

import compact_flax
from compact_flax import augment
from compact_flax import convert
from compact_flax import input_pipeline
from compact_flax import optim
from compact_flax import steps
from configs import common
from fixtures import make_official_steps as official_steps
from fixtures import timm_inputs as inputs

REFERENCE = np.load(pathlib.Path(__file__).parent / 'fixtures' / 'timm_reference.npz')


@pytest.mark.parametrize('name', inputs.LR_CONFIGS)
def test_learning_rate_per_epoch_is_timms(name):
  config = importlib.import_module(f'configs.{name}').get_config()
  timm_lrs = REFERENCE[f'lr/{name}']
  assert len(timm_lrs) == config.num_epochs + config.cooldown_epochs
  schedule = jax.jit(optim.create_learning_rate_schedule(config, steps_per_epoch=7))
  epochs = np.arange(len(timm_lrs))
  for within in (0, 3, 6):  # the rate holds for the whole epoch
    ours = np.asarray(schedule(epochs * 7 + within))
    np.testing.assert_allclose(ours, timm_lrs, rtol=2e-5, atol=1e-12)
  config.lr_step_unit = 'step'  # the option: the rate moves within an epoch
  per_step = optim.create_learning_rate_schedule(config, steps_per_epoch=7)
  assert float(per_step(3)) != float(schedule(3))


def test_the_train_step_takes_the_official_trainers_steps(fixtures_dir):
  """From the official weights, fifteen of our train steps (loss, AdamW with timm's decay groups,
  the schedule stepped per epoch, normalisation) follow the official train.py's steps on the same
  batches, dropout and stochastic depth off (fixtures/official_steps.npz)."""
  pytest.importorskip('torch')
  ref = np.load(pathlib.Path(__file__).parent / 'fixtures' / 'official_steps.npz')
  model, variables = convert.load_torch_checkpoint(
      str(fixtures_dir / f'{official_steps.MODEL}.pth'), official_steps.MODEL, num_classes=10,
      attention_dropout=0.0, stochastic_depth=0.0)
  config = official_steps.config()
  batch = official_steps.BATCH
  tx = optim.create_optimizer(config, optim.create_learning_rate_schedule(
      config, steps_per_epoch=official_steps.POOL // batch))
  state = steps.create_train_state(config, model, tx, params=variables['params'])
  train_step = jax.jit(functools.partial(
      steps.train_step, model=model, tx=tx, config=config,
      device_augment=augment.DeviceAugment(config.aug, on_device=False)))
  losses = []
  for order in ref['order']:
    for start in range(0, len(order) - batch + 1, batch):
      rows = order[start:start + batch]
      state, metrics = train_step(state, {'image': ref['images'][rows],
                                          'label': ref['labels'][rows]}, jax.random.key(0))
      losses.append(float(metrics['loss']))
  np.testing.assert_allclose(losses, ref['losses'], rtol=2e-5)
  images = augment.normalize(jnp.asarray(ref['images'], jnp.float32), config.aug.mean,
                             config.aug.std)
  np.testing.assert_allclose(model.apply({'params': state.params}, images), ref['logits'],
                             rtol=1e-4, atol=1e-4)


def _replayed_params(mode, seed, batch):
  """timm's drawn mixing parameters, one per image, as `augment.mix_with_params` takes them."""
  lam = REFERENCE[f'mix/{mode}/{seed}/lam']
  use = REFERENCE[f'mix/{mode}/{seed}/use_cutmix'].astype(bool)
  recorded = iter(REFERENCE[f'mix/{mode}/{seed}/boxes'])
  boxes = np.zeros((len(lam), 4), np.int64)
  for i in range(len(lam)):
    if use[i] and lam[i] != 1.0:
      boxes[i] = next(recorded)
  if mode == 'batch':
    lam, use, boxes = (np.repeat(x[:1], batch, axis=0) for x in (lam, use, boxes))
  elif mode == 'pair':
    lam, use, boxes = (np.concatenate([x, x[::-1]]) for x in (lam, use, boxes))
  return lam, use, boxes


@pytest.mark.parametrize('mode', ['batch', 'elem', 'pair'])
@pytest.mark.parametrize('seed', inputs.MIX_SEEDS)
def test_mixup_and_cutmix_given_timms_draws_equal_timms_collate(mode, seed):
  images = inputs.reference_images(32, 8, seed)
  labels = REFERENCE[f'mix/{mode}/{seed}/labels']
  lam, use, boxes = _replayed_params(mode, seed, len(images))
  mixed, lam = augment.mix_with_params(
      jnp.asarray(images, jnp.float32), jnp.asarray(lam, jnp.float32), jnp.asarray(use),
      tuple(jnp.asarray(boxes[:, i]) for i in range(4)), round_pixels=True)
  np.testing.assert_array_equal(np.asarray(mixed), REFERENCE[f'mix/{mode}/{seed}/images'])
  onehot = jax.nn.one_hot(labels, 10) * 0.9 + 0.01
  targets = onehot * lam[:, None] + onehot[::-1] * (1 - lam[:, None])
  np.testing.assert_allclose(targets, REFERENCE[f'mix/{mode}/{seed}/targets'], atol=1e-6)


@pytest.mark.parametrize('mode', ['elem', 'pair'])
def test_per_image_mixing_modes_draw_per_image(mode):
  images = jnp.asarray(inputs.reference_images(32, 16, 7), jnp.float32)
  labels = jnp.arange(16) % 10
  _, targets = augment.mixup_cutmix(images, labels, jax.random.key(0), num_classes=10,
                                    smoothing=0.0, mixup_alpha=0.8, cutmix_alpha=1.0, mode=mode)
  own = np.asarray(targets)[np.arange(16), np.asarray(labels)]
  assert len(np.unique(np.round(own, 5))) > 2, 'one lambda per image (or pair), not per batch'
  if mode == 'pair':
    np.testing.assert_allclose(own, own[::-1], rtol=1e-6)  # a pair shares its lambda


@pytest.mark.parametrize('size', sorted(inputs.GEO_SIZES))
def test_rand_augment_geometry_is_timms(size):
  fill = jnp.asarray(inputs.FILL, jnp.float32)
  images = inputs.reference_images(size, 2 if size == 32 else 1, seed=size)
  for op in inputs.GEO_SIZES[size]:
    for interp in ('bilinear', 'bicubic'):
      for arg in inputs.GEO_ARGS[op][:inputs.GEO_ARGS_224 if size == 224 else None]:
        fn = jax.jit(lambda x, a, b, op=op: augment.geometric_op(op, x, a, fill, b))
        ours = np.stack([fn(jnp.asarray(img, jnp.float32), arg, interp == 'bicubic')
                         for img in images])
        diff = np.abs(ours - REFERENCE[f'geo/{size}/{op}/{interp}/{arg}'])
        assert diff.max() <= 1 and diff.mean() <= 0.05, (op, interp, arg, diff.mean())


def test_rand_augment_picks_bilinear_or_bicubic_per_op():
  img = jnp.asarray(inputs.reference_images(32, 1, 5)[0], jnp.float32)
  fill = jnp.asarray(inputs.FILL, jnp.float32)
  bilinear = augment.geometric_op('Rotate', img, 27.0, fill, False)
  bicubic = augment.geometric_op('Rotate', img, 27.0, fill, True)
  assert not np.array_equal(bilinear, bicubic)
  one_op = jax.jit(jax.vmap(lambda k: augment.rand_augment(
      img, k, num_layers=1, magnitude=9., magnitude_std=0., fill=inputs.FILL,
      interpolation='random')))
  outs = np.asarray(one_op(jax.random.split(jax.random.key(0), 2000)))  # ~17 rotations by +27
  for expected in (bilinear, bicubic):
    assert (outs == np.asarray(expected)).all((1, 2, 3)).any()


def test_rand_augment_colour_ops_are_pils():
  images = jnp.asarray(inputs.reference_images(32, 2, seed=7), jnp.float32)
  for name in inputs.COLOUR_OPS:
    for level, sign in inputs.COLOUR_LEVELS:
      op = jax.jit(jax.vmap(lambda x, name=name, level=level, sign=sign: augment.PIXEL_OPS[name](
          x, level, sign)))
      diff = np.abs(np.asarray(op(images)) - REFERENCE[f'colour/{name}/{level}/{sign}'])
      # AutoContrast: PIL's float64 lookup table lands one level lower for some inputs.
      within = 0.03 if name == 'AutoContrast' else 0.002
      assert diff.max() <= 1 and (diff > 0).mean() <= within, (name, level, sign,
                                                               (diff > 0).mean())


def _assert_draws_like_timms(ours, reference, prefix: str):
  """Every `output_statistics` mean of `ours` within four standard errors of the difference of
  timm's recorded under `prefix`."""
  for key, mine in inputs.output_statistics(ours, reference).items():
    theirs = REFERENCE[f'{prefix}/{key}']
    se = np.sqrt(mine.var() / mine.size + theirs.var() / theirs.size)
    assert abs(mine.mean() - theirs.mean()) <= 4 * se + 1e-6, (key, mine.mean(), theirs.mean(), se)


def _per_image_stage(images, aug):
  """`augment.before_mix` with the crop, jitted as the host or the step runs it, drawn
  `RECIPE_DRAWS` times per image: (N, draws, H, W, C), whole pixel values."""
  batch = np.repeat(images, inputs.RECIPE_DRAWS, axis=0)
  ours = jax.jit(lambda x, k: augment.before_mix(x, k, aug, crop=True))(batch, jax.random.key(0))
  ours = np.asarray(ours).reshape((len(images), inputs.RECIPE_DRAWS) + images.shape[1:])
  assert (ours == np.round(ours)).all()
  return ours


def test_crop_flip_and_rand_augment_draw_like_timms_transform():
  """The recipe's per-image stage (crop, flip, RandAugment) against timm's transform on the same
  digit images: every statistic's mean agrees within four standard errors of the difference."""
  images = inputs.digit_images(inputs.RECIPE_IMAGES)
  _assert_draws_like_timms(_per_image_stage(images, common.get_config().aug), images, 'recipe')


def test_without_rand_augment_the_colour_jitter_draws_like_timms():
  """RandAugment off: timm's transform jitters brightness, contrast and saturation instead (its
  default color_jitter, 0.4). Crop, flip and jitter on colour images against it, as above."""
  aug = common.get_config().aug
  aug.auto_augment = ''
  images = inputs.reference_images(aug.img_size, inputs.RECIPE_IMAGES, inputs.JITTER_SEED)
  _assert_draws_like_timms(_per_image_stage(images, aug), images, 'recipe_jitter')


def test_the_host_crop_of_mixed_size_images_draws_like_timms_transform():
  """A folder of images of several sizes: the crop and flip through PIL, then RandAugment, as the
  host pipeline runs them, against timm's transform on the same images (within four standard
  errors of the difference, as above)."""
  images = inputs.mixed_size_digit_images(inputs.RECIPE_IMAGES)
  aug = common.get_config().aug
  rng = np.random.default_rng(0)
  rand_augment = jax.jit(lambda x, k: augment.before_mix(x, k, aug, crop=False))
  ours = np.stack([np.asarray(rand_augment(
      np.stack([input_pipeline.pil_random_resized_crop(img, rng, aug) for img in images]),
      jax.random.key(draw))) for draw in range(inputs.RECIPE_DRAWS)], axis=1)
  _assert_draws_like_timms(ours, inputs.mixed_size_reference(images), 'recipe_mixed')


@pytest.mark.parametrize('case', range(len(inputs.EVAL_CASES)))
def test_eval_resize_and_crop_are_torchvisions(case):
  h, w, size, crop_pct = inputs.EVAL_CASES[case]
  img = inputs.reference_images(max(h, w), 1, seed=100 + case)[0][:h, :w]
  ref = REFERENCE[f'eval/{case}']
  ours = input_pipeline.eval_resize_crop(Image.fromarray(img), (size, size), crop_pct, 'bicubic')
  np.testing.assert_array_equal(np.asarray(ours), ref)
  tf = pytest.importorskip('tensorflow')
  aug = ml_collections.ConfigDict(dict(common.get_config().aug.to_dict(), img_size=size,
                                       crop_pct=crop_pct))
  through_tf = input_pipeline.tf_eval_transform(tf.constant(img), aug).numpy()
  pixels = (through_tf * np.asarray(aug.std) + np.asarray(aug.mean)) * 255
  np.testing.assert_allclose(pixels, ref, atol=1e-3)


def test_erasing_comes_after_the_mix():
  """With the official order, an erased box holds the erasing value alone; erased before the
  mix it would be blended with the other image."""
  config = common.get_config()
  config.aug.update(reprob=1.0, remode='const', mixup=0.8, cutmix=0.0, auto_augment='')
  recipe = augment.DeviceAugment(config.aug, on_device=False)
  images = jnp.concatenate([jnp.full((4, 32, 32, 3), 30.), jnp.full((4, 32, 32, 3), 220.)])
  batch = {'image': images.astype(jnp.uint8), 'label': jnp.arange(8)}
  out, _ = steps.prepare_batch(batch, jax.random.key(1), jax.random.key(2), num_classes=10,
                               config=config, device_augment=recipe)
  out = np.asarray(out)
  normalized = np.asarray(augment.normalize(images, config.aug.mean, config.aug.std))
  erased = (out == 0).all(-1)
  assert erased.any((1, 2)).all(), 'every image has its erased box'
  mixed = ~erased & ~np.isclose(out, normalized, atol=1e-4).all(-1)
  assert mixed.any((1, 2)).all(), 'outside the box, the images are mixed'


@pytest.mark.parametrize('name', ['cifar10_cct7_sine_1500', 'cifar10_cct7_sine_5000',
                                  'cifar100_cct7_sine_1500', 'cifar100_cct7_sine_5000'])
def test_sine_recipes_train_what_the_official_runs_trained(name):
  config = importlib.import_module(f'configs.{name}').get_config()
  model = compact_flax.create_model(config.model, **{
      k: v for k, v in config.model_kwargs.items() if v is not None})
  params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params']
  assert 'positional_emb' in params['classifier'], 'a learnable table, as the official run'
  sine = compact_flax.create_model(config.model)  # the option away: the frozen table
  assert 'positional_emb' not in sine.init(jax.random.key(0),
                                           jnp.zeros((1, 32, 32, 3)))['params']['classifier']
