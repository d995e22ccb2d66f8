"""Preference losses: SLPO and the DPO family.

Each loss is one pure function. Inputs are per-example sequence
log-probabilities (see :mod:`slpo_jax.logprobs`); outputs are per-example
losses of the same leading shape, which the caller reduces. Hyperparameters
are keyword-only.
"""

from slpo_jax.losses._common import log1mexp
from slpo_jax.losses.bco import RunningMean
from slpo_jax.losses.bco import bco_pair_loss
from slpo_jax.losses.bco import bco_pair_running_loss
from slpo_jax.losses.dpo_family import dpo_loss
from slpo_jax.losses.dpo_family import hinge_loss
from slpo_jax.losses.dpo_family import ipo_loss
from slpo_jax.losses.dpo_family import orpo_loss
from slpo_jax.losses.dpo_family import simpo_loss
from slpo_jax.losses.dpo_options import DpoOptions
from slpo_jax.losses.dpo_options import f_divergence_scores
from slpo_jax.losses.dpo_options import length_desensitized_logps
from slpo_jax.losses.dpo_options import wpo_weights
from slpo_jax.losses.dpo_variants import apo_down_loss
from slpo_jax.losses.dpo_variants import apo_zero_loss
from slpo_jax.losses.dpo_variants import discopop_loss
from slpo_jax.losses.dpo_variants import exo_pair_loss
from slpo_jax.losses.dpo_variants import nca_pair_loss
from slpo_jax.losses.dpo_variants import robust_loss
from slpo_jax.losses.dpo_variants import sft_loss
from slpo_jax.losses.dpo_variants import sigmoid_loss
from slpo_jax.losses.dpo_variants import sigmoid_norm_loss
from slpo_jax.losses.dpo_variants import sppo_hard_loss
from slpo_jax.losses.kto import kto_loss
from slpo_jax.losses.kto import kto_reference_point
from slpo_jax.losses.optimal_transport import aot_loss
from slpo_jax.losses.optimal_transport import aot_unpaired_loss
from slpo_jax.losses.slpo import slpo_loss
from slpo_jax.losses.slpo import slpo_soft_loss
from slpo_jax.losses.slpo import slpo_target_log_weight
from slpo_jax.losses.slpo import slpo_token_loss
from slpo_jax.losses.slpo import slpo_token_loss_from_reference
from slpo_jax.losses.slpo import slpo_token_loss_from_token_logps
from slpo_jax.losses.slpo import slpo_token_weights
from slpo_jax.losses.slpo_forms import slpo_diff_loss
from slpo_jax.losses.slpo_forms import slpo_length_tempered_loss
from slpo_jax.losses.slpo_normalized import slpo_normalized_loss
from slpo_jax.losses.table import LOSSES
from slpo_jax.losses.table import LossSpec
from slpo_jax.losses.table import WeightedLoss
from slpo_jax.losses.table import loss_spec
from slpo_jax.losses.table import weighted_loss

__all__ = [
  "DpoOptions",
  "LOSSES",
  "LossSpec",
  "RunningMean",
  "WeightedLoss",
  "aot_loss",
  "aot_unpaired_loss",
  "apo_down_loss",
  "apo_zero_loss",
  "bco_pair_loss",
  "bco_pair_running_loss",
  "discopop_loss",
  "dpo_loss",
  "exo_pair_loss",
  "f_divergence_scores",
  "hinge_loss",
  "ipo_loss",
  "kto_loss",
  "kto_reference_point",
  "length_desensitized_logps",
  "log1mexp",
  "loss_spec",
  "weighted_loss",
  "nca_pair_loss",
  "orpo_loss",
  "robust_loss",
  "sft_loss",
  "sigmoid_loss",
  "sigmoid_norm_loss",
  "simpo_loss",
  "slpo_diff_loss",
  "slpo_length_tempered_loss",
  "slpo_loss",
  "slpo_normalized_loss",
  "slpo_soft_loss",
  "slpo_target_log_weight",
  "slpo_token_loss",
  "slpo_token_loss_from_reference",
  "slpo_token_loss_from_token_logps",
  "slpo_token_weights",
  "sppo_hard_loss",
  "wpo_weights",
]
