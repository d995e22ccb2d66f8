"""slpo-jax: SLPO and the DPO family of preference losses in JAX.

The top level re-exports the pure functions most users need::

  from slpo_jax import sequence_logps, pair_not_logps, losses
"""

from slpo_jax import fused
from slpo_jax import losses
from slpo_jax.logprobs import pair_not_logps
from slpo_jax.logprobs import pair_not_logps_from_token_logps
from slpo_jax.logprobs import sequence_logps
from slpo_jax.logprobs import sequence_logps_from_token_logps
from slpo_jax.logprobs import token_logps
from slpo_jax.metrics import preference_metrics
from slpo_jax.pair_stats import HeadOptions
from slpo_jax.pair_stats import PairStats
from slpo_jax.pair_stats import pair_stats_from_hidden
from slpo_jax.pair_stats import pair_stats_from_logits
from slpo_jax.pair_stats import pair_stats_from_token_logps

__all__ = [
  "HeadOptions",
  "PairStats",
  "fused",
  "losses",
  "pair_not_logps",
  "pair_not_logps_from_token_logps",
  "pair_stats_from_hidden",
  "pair_stats_from_logits",
  "pair_stats_from_token_logps",
  "preference_metrics",
  "sequence_logps",
  "sequence_logps_from_token_logps",
  "token_logps",
]
