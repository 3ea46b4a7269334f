"""The compute dtype a run uses, and the dynamic loss scale that float16 training needs.

`config.dtype='auto'` is the official recipes' AMP where each device does it best: bfloat16 on TPUs
and on GPUs that have it (compute capability 8.0 and up: A100, H100, RTX 30xx and later), float16
with dynamic loss scaling on older GPUs (V100, T4, RTX 20xx: as the official runs' AMP), float32 on
CPUs (XLA's CPU bfloat16 is slower: docs/notes.md). Parameters and optimizer state stay float32.

float16 overflows where bfloat16 does not, so its gradients are taken of the loss times a scale
(`LossScale`, part of the train state and of every checkpoint): a step with a non-finite gradient
is skipped and halves the scale; `growth_interval` finite steps in a row double it.
"""

from typing import Optional, Tuple

import flax.struct
import jax
import jax.numpy as jnp

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
CHOICES = ('auto',) + tuple(DTYPES)
BFLOAT16_COMPUTE_CAPABILITY = 8.0  # Ampere: the first NVIDIA GPUs with bfloat16 matmuls


def auto(platform: Optional[str] = None,
         compute_capability: Optional[str] = None) -> Tuple[str, str]:
  """('bfloat16' | 'float16' | 'float32', why) for a device of `platform` (default: JAX's first
  device, whose compute capability is read where it is a GPU)."""
  if platform is None:
    device = jax.devices()[0]
    platform = device.platform
    compute_capability = getattr(device, 'compute_capability', None)
  if platform == 'tpu':
    return 'bfloat16', 'a TPU'
  if platform in ('gpu', 'cuda', 'rocm'):
    try:
      capability = float(compute_capability)
    except (TypeError, ValueError):
      return 'bfloat16', 'a GPU of unknown compute capability'
    if capability >= BFLOAT16_COMPUTE_CAPABILITY:
      return 'bfloat16', f'a GPU of compute capability {compute_capability}'
    return ('float16', f'a GPU of compute capability {compute_capability}, without bfloat16 '
            '(float16 with dynamic loss scaling)')
  return 'float32', f'a {platform.upper()} (XLA\'s bfloat16 is slower there)'


def resolve(name: str, platform: Optional[str] = None,
            compute_capability: Optional[str] = None) -> str:
  """`config.dtype` as the name of a dtype: 'auto' decided for the device (`auto`)."""
  return auto(platform, compute_capability)[0] if name == 'auto' else name


def compute_dtype(name: str, platform: Optional[str] = None,
                  compute_capability: Optional[str] = None):
  return DTYPES[resolve(name, platform, compute_capability)]


@flax.struct.dataclass
class LossScale:
  """A dynamic loss scale: the loss is multiplied by `scale` before the gradients are taken."""
  scale: jax.Array          # float32
  good_steps: jax.Array     # int32: finite steps since the scale last moved
  growth_interval: int = flax.struct.field(pytree_node=False, default=2000)

  @classmethod
  def create(cls, initial: float, growth_interval: int) -> 'LossScale':
    return cls(scale=jnp.asarray(initial, jnp.float32), good_steps=jnp.zeros((), jnp.int32),
               growth_interval=growth_interval)

  def update(self, finite: jax.Array) -> 'LossScale':
    """The scale after a step whose gradients were all finite (`finite`) or not."""
    grow = finite & (self.good_steps + 1 >= self.growth_interval)
    scale = jnp.where(finite, jnp.where(grow, self.scale * 2, self.scale),
                      jnp.maximum(self.scale / 2, 1.0))
    good = jnp.where(finite & ~grow, self.good_steps + 1, 0)
    return self.replace(scale=scale, good_steps=good.astype(jnp.int32))


def all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]))
