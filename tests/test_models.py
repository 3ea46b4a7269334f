"""Shapes, dtypes, options and the variant registry of the Flax modules."""

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compact_flax
from compact_flax import kernels
from compact_flax import merge
from compact_flax import tokenizer
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
  vision = [n for n in compact_flax.list_models() if not n.startswith('text_')]
  assert sorted(vision) == sorted(PARAM_COUNTS)  # the text models: tests/test_text_models.py


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
      rates[context.module.parent.name] = kwargs['rate']
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    model.apply(variables, x, train=True, rngs={'dropout': jax.random.key(0)})
  np.testing.assert_allclose([rates[f'blocks_{i}'] for i in range(4)], np.linspace(0, 0.3, 4))


def test_drop_path_takes_a_traced_rate_with_dropouts_draws():
  x = jax.random.normal(jax.random.key(1), (16, 5, 8))
  rngs = {'dropout': jax.random.key(2)}
  dropout = nn.Dropout(0.3, broadcast_dims=(1, 2))
  want = dropout.apply({}, x, deterministic=False, rngs=rngs)
  got = jax.jit(lambda rate: transformer.DropPath().apply(
      {}, x, rate, deterministic=False, rngs=rngs))(jnp.float32(0.3))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert 0 < int((got == 0).all(axis=(1, 2)).sum()) < 16


@pytest.mark.parametrize('name', ['cct_4_3x2_32', 'vit_2_4_32'])
def test_scanned_layers_compute_the_same_function(name):
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  plain = compact_flax.create_model(name)
  scanned = compact_flax.create_model(name, scan_layers=True)
  params = plain.init(jax.random.key(0), x)['params']
  stacked = merge.fit_params(scanned, params)  # per-layer weights -> one stacked tree
  depth = plain.num_layers
  chex.assert_shape(stacked['params']['classifier']['blocks']['linear1']['kernel'],
                    (depth,) + params['classifier']['blocks_0']['linear1']['kernel'].shape)
  np.testing.assert_allclose(scanned.apply(stacked, x), plain.apply({'params': params}, x),
                             rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_equal(merge.fit_params(plain, stacked['params'])['params'], params)
  _, inter = scanned.apply(stacked, x, mutable='intermediates')
  (weights,) = inter['intermediates']['classifier']['blocks']['self_attn']['attention_weights']
  chex.assert_shape(weights, (depth, 2, plain.num_heads, 64 + (name[:3] == 'vit'),
                              64 + (name[:3] == 'vit')))
  logits = scanned.apply(stacked, x, train=True, rngs={'dropout': jax.random.key(1)})
  assert np.isfinite(np.asarray(logits)).all()


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


@pytest.mark.parametrize('shape,k,s,p', [((2, 32, 32, 5), 3, 2, 1), ((2, 31, 30, 3), 3, 2, 1),
                                         ((2, 17, 16, 3), 2, 2, 0), ((1, 9, 11, 2), 3, 3, 0),
                                         ((1, 10, 10, 2), 5, 2, 2), ((1, 8, 8, 1), 3, 1, 1)])
def test_max_pool_and_its_gradient_match_reduce_window(shape, k, s, p):
  """The hand-written max-pool gradient equals XLA's select-and-scatter of `nn.max_pool`."""
  x = jax.random.normal(jax.random.key(1), shape)
  ref = lambda x: nn.max_pool(x, (k, k), (s, s), ((p, p), (p, p)))
  ours = lambda x: kernels.max_pool(x, k, s, p)
  y, vjp = jax.vjp(ours, x)
  y_ref, vjp_ref = jax.vjp(ref, x)
  np.testing.assert_array_equal(y, y_ref)
  cotangent = jax.random.normal(jax.random.key(2), y.shape)
  np.testing.assert_allclose(vjp(cotangent)[0], vjp_ref(cotangent)[0], atol=1e-6)
  # Ties go whole to the first window offset, as in PyTorch and select-and-scatter.
  ones = jnp.ones(shape)
  np.testing.assert_array_equal(jax.grad(lambda x: ours(x).sum())(ones),
                                jax.grad(lambda x: ref(x).sum())(ones))


def test_tokenizer_relu_after_pool_gives_conv_relu_pool():
  """The tokenizer pools before its ReLU; values and gradients equal Conv -> ReLU -> MaxPool."""
  tok = tokenizer.Tokenizer(embedding_dim=16, kernel_size=3, stride=1, padding=1, n_conv_layers=2,
                            in_planes=8)
  x = jax.random.normal(jax.random.key(0), (2, 12, 12, 3))
  params = tok.init(jax.random.key(1), x)['params']

  def reference(params):
    y = x
    for i in range(2):
      w = params[f'conv_layers_{i}']['kernel']
      y = jax.lax.conv_general_dilated(y, w, (1, 1), ((1, 1), (1, 1)),
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
      y = nn.max_pool(nn.relu(y), (3, 3), (2, 2), ((1, 1), (1, 1)))
    return y.reshape(2, -1, 16)

  np.testing.assert_allclose(tok.apply({'params': params}, x), reference(params), atol=1e-5)
  loss = lambda f: (lambda p: jnp.sum(f(p) ** 2))
  chex.assert_trees_all_close(jax.grad(loss(lambda p: tok.apply({'params': p}, x)))(params),
                              jax.grad(loss(reference))(params), atol=1e-4, rtol=1e-4)


def test_materialize_on_cpu_is_exact():
  x = jax.nn.relu(jax.random.normal(jax.random.key(0), (2, 5, 5, 7)) * 1e3)
  np.testing.assert_array_equal(kernels.materialize_on_cpu(x), x)
  g = jax.random.normal(jax.random.key(1), x.shape)
  np.testing.assert_array_equal(jax.vjp(kernels.materialize_on_cpu, x)[1](g)[0], g)
  xb = x.astype(jnp.bfloat16)
  np.testing.assert_array_equal(kernels.materialize_on_cpu(xb), xb)


def _loss_and_grad(model, x):
  """A new function each call: jit caches traces per function, and kernels choose at trace time."""
  def loss(p):
    return jnp.sum(model.apply({'params': p}, x, train=True,
                               rngs={'dropout': jax.random.key(2)}) ** 2)
  return jax.jit(jax.value_and_grad(loss))


@pytest.mark.parametrize('name', ['cct_2_3x2_32', 'cct_7_7x2_224', 'vit_2_4_32'])
def test_cpu_kernels_and_the_generic_ops_agree(name):
  """The CPU-only kernels compute what the plain ops that GPUs and TPUs get compute."""
  model = compact_flax.create_model(name, img_size=32)
  x = jax.random.normal(jax.random.key(0), (2, model.img_size, model.img_size, 3))
  params = model.init(jax.random.key(1), x)['params']
  cpu = _loss_and_grad(model, x)
  with kernels.target('gpu'):
    generic = _loss_and_grad(model, x)
    assert 'reduce_window' in generic.lower(params).as_text() or name.startswith('vit')
    generic_out = generic(params)
  assert 'reduce_window' not in cpu.lower(params).as_text()
  chex.assert_trees_all_close(cpu(params), generic_out, rtol=2e-5, atol=2e-5)


def test_cpu_tricks_stay_off_other_backends():
  """Traced for a TPU, the tokenizer uses XLA's own convolution and pooling; on CPU it does not."""
  model = compact_flax.create_model('cct_2_3x2_32')
  x = jnp.zeros((2, 32, 32, 3))
  params = model.init(jax.random.key(0), x)['params']
  cpu = _loss_and_grad(model, x).lower(params).as_text()
  with kernels.target('tpu'):
    tpu = _loss_and_grad(model, x).lower(params).as_text()
  assert 'reduce_window' not in cpu and 'reduce_window' in tpu
  assert tpu.count('stablehlo.convolution') > cpu.count('stablehlo.convolution')


def test_tpu_training_recomputes_attention_and_gelu_to_the_same_values():
  """Traced for a TPU, the training step recomputes attention weights and GELU in the backward
  pass (fewer HBM bytes there): the loss, the gradients and the dropout draws stay the same."""
  model = compact_flax.create_model('cct_2_3x2_32')
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  params = model.init(jax.random.key(1), x)['params']
  with kernels.target('gpu'):
    plain = _loss_and_grad(model, x)
    plain_text, plain_out = plain.lower(params).as_text(), plain(params)
  with kernels.target('tpu'):
    tpu = _loss_and_grad(model, x)
    tpu_text, tpu_out = tpu.lower(params).as_text(), tpu(params)
  # jax.checkpoint keeps recomputed values apart from the saved ones with optimization barriers.
  assert 'optimization_barrier' not in plain_text
  assert tpu_text.count('optimization_barrier') >= 2 * model.num_layers
  chex.assert_trees_all_close(tpu_out, plain_out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('rate', [0.0, 0.5, 1.0])
def test_attention_dropout_is_nn_dropouts_at_every_rate(rate):
  """`softmax_attention`'s dropout is `nn.Dropout`'s arithmetic, including its 1.0 edge case (all
  dropped, finite gradients)."""
  q = jax.random.normal(jax.random.key(0), (2, 5, 2, 8))
  key = jax.random.key(1)
  out, weights = transformer.softmax_attention(q, q, q, dropout_rate=rate, dropout_rng=key)
  dropped = nn.Dropout(rate).apply({}, weights, deterministic=False, rng=key)
  np.testing.assert_allclose(out, jnp.einsum('bhqk,bkhd->bqhd', dropped, q), rtol=1e-5, atol=1e-6)
  grad = jax.grad(lambda q: transformer.softmax_attention(q, q, q, None, rate, key)[0].sum())(q)
  assert np.isfinite(np.asarray(grad)).all()
