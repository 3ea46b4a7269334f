"""Shapes, dtypes, options and the variant registry of the Flax modules."""

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compact_flax
from compact_flax import transformer

# The official trainable parameter counts (sine variants without the frozen table). A name added to
# the registry without a pinned count here fails `test_every_registered_name_is_pinned`.
PARAM_COUNTS = {
    'cct_2_3x2_32': 283_723, 'cct_2_3x2_32_sine': 275_531,
    'cct_4_3x2_32': 482_123, 'cct_4_3x2_32_sine': 473_931,
    'cct_6_3x1_32': 3_233_803, 'cct_6_3x1_32_sine': 3_168_267,
    'cct_6_3x2_32': 3_326_923, 'cct_6_3x2_32_sine': 3_310_539,
    'cct_7_3x1_32': 3_760_139, 'cct_7_3x1_32_c100': 3_783_269,
    'cct_7_3x1_32_sine': 3_694_603, 'cct_7_3x1_32_sine_c100': 3_717_733,
    'cct_7_3x2_32': 3_853_259, 'cct_7_3x2_32_sine': 3_836_875,
    'cct_7_7x2_224': 4_573_735, 'cct_7_7x2_224_sine': 4_523_559,
    'cct_14_7x2_224': 22_367_273, 'cct_14_7x2_384': 22_513_193, 'cct_14_7x2_384_fl': 22_167_463,
    'cvt_2_4_32': 214_539, 'cvt_2_4_32_sine': 206_347, 'cvt_4_4_32': 412_939,
    'cvt_4_4_32_sine': 404_747, 'cvt_6_4_32': 3_190_283, 'cvt_6_4_32_sine': 3_173_899,
    'cvt_7_4_32': 3_716_619, 'cvt_7_4_32_sine': 3_700_235,
    'vit_2_4_32': 214_666, 'vit_2_4_32_sine': 206_346, 'vit_4_4_32': 413_066,
    'vit_4_4_32_sine': 404_746, 'vit_6_4_32': 3_190_538, 'vit_6_4_32_sine': 3_173_898,
    'vit_7_4_32': 3_716_874, 'vit_7_4_32_sine': 3_700_234,
}


def _shapes(model, batch=2):
  size = model.img_size
  x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  return variables, jax.eval_shape(model.apply, variables, x)


def test_every_registered_name_is_pinned():
  assert sorted(compact_flax.list_models()) == sorted(PARAM_COUNTS)


@pytest.mark.parametrize('name', sorted(PARAM_COUNTS))
def test_variant_param_count_and_output(name):
  model = compact_flax.create_model(name)
  variables, logits = _shapes(model)
  count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables['params']))
  assert count == PARAM_COUNTS[name]
  chex.assert_shape(logits, (2, model.num_classes))
  assert set(variables) == {'params'}


def test_unknown_name_lists_close_names():
  with pytest.raises(ValueError, match='cct_7_3x1_32'):
    compact_flax.create_model('cct_7_3x1')
  with pytest.raises(TypeError, match='has no argument'):
    compact_flax.create_model('cct_2_3x2_32', num_class=3)
  with pytest.raises(ValueError, match="Unknown positional embedding 'rope'"):
    _shapes(compact_flax.create_model('cct_2_3x2_32', positional_embedding='rope'))


@pytest.mark.parametrize('pe', ['learnable', 'sine', 'none'])
def test_positional_embedding_kinds(pe):
  model = compact_flax.create_model('cvt_2_4_32', positional_embedding=pe)
  variables, _ = _shapes(model)
  assert ('positional_emb' in variables['params']['classifier']) == (pe == 'learnable')


def test_sine_table_matches_official_formula():
  n, d = 17, 12
  ref = np.array([[p / (10000**(2 * (i // 2) / d)) for i in range(d)] for p in range(n)])
  ref[:, 0::2], ref[:, 1::2] = np.sin(ref[:, 0::2]), np.cos(ref[:, 1::2])
  np.testing.assert_allclose(transformer.sinusoidal_embedding(n, d)[0], ref, atol=1e-6)


@pytest.mark.parametrize('name', ['cct_2_3x2_32', 'cvt_2_4_32', 'vit_2_4_32'])
def test_jit_any_batch_train_and_eval(name):
  model = compact_flax.create_model(name, dropout=0.1)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  apply = jax.jit(model.apply, static_argnames='train')
  for batch in (1, 3):
    x = jax.random.normal(jax.random.key(batch), (batch, 32, 32, 3))
    out = apply(variables, x, train=False)
    chex.assert_shape(out, (batch, 10))
    chex.assert_tree_all_finite(out)
    np.testing.assert_array_equal(out, apply(variables, x, train=False))
  a = apply(variables, x, train=True, rngs={'dropout': jax.random.key(1)})
  b = apply(variables, x, train=True, rngs={'dropout': jax.random.key(2)})
  assert not np.allclose(a, b), 'dropout/stochastic depth had no effect in training mode'
  with pytest.raises(flax.errors.InvalidRngError):
    model.apply(variables, x, train=True)


def test_bfloat16_compute_float32_params():
  model = compact_flax.create_model('cct_2_3x2_32', dtype=jnp.bfloat16)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  chex.assert_trees_all_equal_dtypes(
      variables['params'], jax.tree.map(lambda p: jnp.zeros((), jnp.float32), variables['params']))
  out = model.apply(variables, jnp.ones((2, 32, 32, 3)))
  assert out.dtype == jnp.bfloat16


def test_non_square_images():
  model = compact_flax.create_model('cct_2_3x2_32', img_size=(32, 48))
  assert model.grid_size() == (8, 12)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 48, 3)))
  assert variables['params']['classifier']['positional_emb'].shape == (1, 96, 128)
  chex.assert_shape(model.apply(variables, jnp.ones((2, 32, 48, 3))), (2, 10))
  with pytest.raises(ValueError, match='img_size'):
    model.apply(variables, jnp.ones((2, 48, 48, 3)))
  vit = compact_flax.create_model('vit_2_4_32', img_size=(16, 32))
  chex.assert_shape(vit.apply(vit.init(jax.random.key(0), jnp.zeros((1, 16, 32, 3))),
                              jnp.ones((1, 16, 32, 3))), (1, 10))


def test_stochastic_depth_rates_grow_linearly():
  model = compact_flax.create_model('cct_4_3x2_32', stochastic_depth=0.3)
  x = jnp.ones((1, 32, 32, 3))
  variables = model.init(jax.random.key(0), x)
  rates = {}

  def record(next_fun, args, kwargs, context):
    if context.module.name == 'drop_path':
      rates[context.module.parent.name] = context.module.rate
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    model.apply(variables, x, train=True, rngs={'dropout': jax.random.key(0)})
  np.testing.assert_allclose([rates[f'blocks_{i}'] for i in range(4)], np.linspace(0, 0.3, 4))


def test_intermediates_pooling_weights_sum_to_one():
  model = compact_flax.create_model('cct_2_3x2_32')
  x = jax.random.normal(jax.random.key(0), (3, 32, 32, 3))
  variables = model.init(jax.random.key(0), x)
  _, state = model.apply(variables, x, mutable='intermediates')
  (w,) = state['intermediates']['classifier']['pooling_weights']
  chex.assert_shape(w, (3, 64))
  np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)


def test_nchw_input_is_a_clear_error():
  model = compact_flax.create_model('cct_2_3x2_32')
  with pytest.raises(ValueError, match='NHWC'):
    model.init(jax.random.key(0), jnp.zeros((1, 3, 32, 32)))
