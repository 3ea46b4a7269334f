"""An NNX face for every registered model: the same module and parameters, as a `flax.nnx.Module`.

    model = compact_flax.nnx_models.create_nnx_model('cct_7_3x1_32', variables=variables)
    logits = model(images)                       # eval mode
    logits = model(images, train=True)           # dropout and stochastic depth from its own rngs
    optimizer = nnx.Optimizer(model, optax.adamw(5e-4), wrt=nnx.Param)

Built with `flax.nnx.bridge.ToNNX` around the Linen module, so converted and trained weights, the
checkpoints and the converter all carry over unchanged: `nnx_params(model)` gives the Linen
`params` tree back (for `save_model` or `model.apply`).
"""

from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from compact_flax import merge
from compact_flax import models


def to_nnx(model, variables: Optional[Dict[str, Any]] = None, *, seed: int = 0) -> nnx.Module:
  """The Linen `model` as an NNX module holding `variables['params']` (default: a fresh init
  with `seed`); `seed` also seeds its dropout rngs."""
  module = nnx.bridge.ToNNX(model, rngs=nnx.Rngs(params=seed, dropout=seed + 1))
  shape, dtype = merge.input_spec(model)
  nnx.jit(nnx.bridge.lazy_init)(module, jnp.zeros((1,) + shape, dtype))  # one compiled init
  if variables is not None:
    state = nnx.state(module, nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, dict(variables['params'])))
    nnx.update(module, state)
  return module


def create_nnx_model(name: str, *, variables=None, seed: int = 0, **overrides) -> nnx.Module:
  """A registered variant by name (with `overrides`) as an NNX module."""
  return to_nnx(models.create_model(name, **overrides), variables, seed=seed)


def nnx_params(module: nnx.Module) -> Dict[str, Any]:
  """The Linen `params` tree of an NNX-wrapped model: `{'params': nnx_params(m)}` applies it."""
  return nnx.to_pure_dict(nnx.state(module, nnx.Param))
