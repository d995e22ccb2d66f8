"""A frozen output head (LoRA): the fused head's backward pass computes the
hidden states' gradient alone, equal to the one it computes beside the
head's."""

import jax
import jax.numpy as jnp
import numpy as np

from slpo_jax import fused_tiles


def _loss(hidden, head, labels):
  logp, not_logp, _ = fused_tiles.tiled_token_logps(
    hidden, head, labels, None, 32, 16
  )
  return jnp.sum(logp * jnp.arange(logp.shape[0])) + jnp.sum(not_logp)


def _dots(jaxpr) -> int:
  count = 0
  for equation in jaxpr.eqns:
    count += equation.primitive.name == "dot_general"
    for sub in jax.core.jaxprs_in_params(equation.params):
      count += _dots(sub)
  return count


def test_frozen_head_gets_no_gradient_work():
  rng = np.random.default_rng(0)
  hidden = jnp.asarray(rng.normal(size=(64, 16)), jnp.float32)
  head = jnp.asarray(rng.normal(size=(16, 100)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 100, 64), jnp.int32)
  both = jax.grad(_loss, argnums=(0, 1))
  alone = jax.grad(_loss)
  d_hidden, d_head = both(hidden, head, labels)
  np.testing.assert_array_equal(alone(hidden, head, labels), d_hidden)
  assert float(jnp.max(jnp.abs(d_head))) > 1  # Both are really computed.
  # The head's tile matmul and its [d, V] buffer are gone.
  frozen = _dots(jax.make_jaxpr(alone)(hidden, head, labels).jaxpr)
  trained = _dots(jax.make_jaxpr(both)(hidden, head, labels).jaxpr)
  assert frozen == trained - 1
