"""The loss table: every loss of the library, declared once, by name.

A loss is one pure function whose parameters say what it reads. Its array
parameters are named after the fields of :class:`slpo_jax.PairStats`:

* ``policy_<field>``: the policy's statistic (``policy_chosen_logps``);
* ``reference_<field>``: the reference model's (``reference_chosen_logps``);
* ``<field>`` alone: a property of the data, the same for both models
  (``chosen_lengths``, ``chosen_where``).

Its other keyword-only parameters are hyperparameters (``beta``,
``temperature``). A loss that carries state from batch to batch (BCO's
running reward mean) takes it as ``loss_state``, returns ``(losses,
new_state)``, and its table line names the state's initial value. :class:`LossSpec` reads the signature once, so a table line
is just ``name: function``; what the loss needs (a reference model, the pair
complement, token values) follows from the names, and the training program
and the experiments call every loss through the same :meth:`LossSpec.__call__`.

Adding a loss: write the pure function with parameters named as above, add
one line to :data:`LOSSES`, test it, and declare any new hyperparameter in
the program's config.
"""

import dataclasses
import inspect
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

import jax

from slpo_jax.losses import bco
from slpo_jax.losses import dpo_family
from slpo_jax.losses import dpo_options
from slpo_jax.losses import dpo_variants
from slpo_jax.losses import optimal_transport
from slpo_jax.losses import slpo
from slpo_jax.losses import slpo_forms
from slpo_jax.losses import slpo_normalized
from slpo_jax.pair_stats import PairStats

_FIELDS = frozenset(PairStats._fields)
# Fields filled only by a second head pass (``pair_values=True``).
_PAIR_FIELDS = frozenset(
  {"pair_not_logps", "chosen_token_logps", "chosen_token_pair_not_logps"}
)
_TOKEN_FIELDS = frozenset(
  {"chosen_token_logps", "chosen_token_pair_not_logps", "chosen_where"}
)


@dataclasses.dataclass(frozen=True)
class _Input:
  parameter: str
  model: str  # "policy", "reference" or "data" (read from the policy's stats).
  field: str


_STATE = "loss_state"


def _inputs_and_hparams(fn) -> tuple[tuple[_Input, ...], tuple[str, ...]]:
  inputs, hparams = [], []
  for name, parameter in inspect.signature(fn).parameters.items():
    model, _, field = name.partition("_")
    if name == _STATE:
      continue
    if model in ("policy", "reference") and field in _FIELDS:
      inputs.append(_Input(name, model, field))
    elif name in _FIELDS:
      inputs.append(_Input(name, "data", name))
    elif parameter.kind is inspect.Parameter.KEYWORD_ONLY:
      hparams.append(name)
    else:
      raise TypeError(
        f"{fn.__name__}: parameter {name!r} is neither a PairStats field"
        " (optionally prefixed policy_ or reference_) nor keyword-only"
      )
  return tuple(inputs), tuple(hparams)


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """One loss of the table and what it needs, read from its signature.

  Attributes:
    name: the table name (``config.loss.name`` in the program).
    fn: the pure per-example loss function.
    initial_state: for a loss with a ``loss_state`` parameter, the function
      giving the state before the first batch; None for the others.
    inputs: the statistics it reads, derived from ``fn``'s parameters.
    hparams: its hyperparameter names, derived from ``fn``'s parameters.
  """

  name: str
  fn: Callable[..., Any]
  initial_state: Callable[[], Any] | None = None
  inputs: tuple[_Input, ...] = dataclasses.field(init=False)
  hparams: tuple[str, ...] = dataclasses.field(init=False)

  def __post_init__(self):
    inputs, hparams = _inputs_and_hparams(self.fn)
    object.__setattr__(self, "inputs", inputs)
    object.__setattr__(self, "hparams", hparams)
    takes_state = _STATE in inspect.signature(self.fn).parameters
    if takes_state != (self.initial_state is not None):
      raise TypeError(
        f"loss {self.name!r}: a {_STATE} parameter and an initial_state go"
        " together"
      )

  @property
  def stateful(self) -> bool:
    """Whether the loss carries state from batch to batch."""
    return self.initial_state is not None

  @property
  def needs_reference(self) -> bool:
    """Whether the loss reads the reference model's statistics."""
    return any(i.model == "reference" for i in self.inputs)

  @property
  def needs_pair_values(self) -> bool:
    """Whether the head must run its second, pair-excluding pass."""
    return any(i.field in _PAIR_FIELDS for i in self.inputs)

  @property
  def batch_level(self) -> bool:
    """Whether a pair's loss depends on the other pairs of its batch.

    Such a loss (AOT sorts the batch's margins) reads ``counted``, to leave
    padding rows out; under gradient accumulation its batch is the
    micro-batch.
    """
    return any(i.field == "counted" for i in self.inputs)

  @property
  def needs_reference_tokens(self) -> bool:
    """Whether the reference's per-token values are read (not precomputable)."""
    return any(
      i.model == "reference" and i.field in _TOKEN_FIELDS | _PAIR_FIELDS
      for i in self.inputs
    )

  def __call__(
    self,
    policy: PairStats,
    reference: PairStats | None = None,
    **hparams: Any,
  ) -> jax.Array:
    """Per-example losses of ``policy`` against ``reference``.

    Args:
      policy: the policy's statistics.
      reference: the reference's statistics; None if the loss needs none.
      **hparams: values for (some of) :attr:`hparams`; the function's
        defaults hold for the rest. Unknown names are an error.

    Returns:
      ``[B]`` per-example losses.
    """
    if self.stateful:
      raise TypeError(
        f"loss {self.name!r} carries a state: call .apply(policy, reference,"
        " loss_state, ...)"
      )
    return self.apply(policy, reference, None, **hparams)[0]

  def apply(
    self,
    policy: PairStats,
    reference: PairStats | None = None,
    loss_state: Any = None,
    **hparams: Any,
  ) -> tuple[jax.Array, Any]:
    """Per-example losses and the state after this batch.

    Args:
      policy: the policy's statistics.
      reference: the reference's statistics; None if the loss needs none.
      loss_state: the state before this batch, for a :attr:`stateful` loss
        (ignored by the others).
      **hparams: as for :meth:`__call__`.

    Returns:
      ``([B]`` per-example losses, the new state (None if stateless)``)``.
    """
    unknown = sorted(set(hparams) - set(self.hparams))
    if unknown:
      raise TypeError(
        f"loss {self.name!r} takes the hyperparameters {list(self.hparams)},"
        f" not {unknown}"
      )
    arguments = {}
    for item in self.inputs:
      stats = reference if item.model == "reference" else policy
      value = None if stats is None else getattr(stats, item.field)
      if value is None:
        raise ValueError(
          f"loss {self.name!r} reads {item.parameter}, which the"
          f" {item.model} statistics do not hold"
        )
      arguments[item.parameter] = value
    if not self.stateful:
      return self.fn(**arguments, **hparams), None
    if loss_state is None:
      raise ValueError(f"loss {self.name!r} needs its loss_state")
    return self.fn(**arguments, loss_state=loss_state, **hparams)


def _table(**entries) -> Mapping[str, LossSpec]:
  """Table lines: ``name=function``, or ``name=(function, initial_state)``."""
  table = {}
  for name, entry in entries.items():
    fn, initial = entry if isinstance(entry, tuple) else (entry, None)
    table[name] = LossSpec(name, fn, initial)
  return table


LOSSES: Mapping[str, LossSpec] = _table(
  dpo=dpo_family.dpo_loss,
  ipo=dpo_family.ipo_loss,
  hinge=dpo_family.hinge_loss,
  simpo=dpo_family.simpo_loss,
  orpo=dpo_family.orpo_loss,
  slpo=slpo.slpo_loss,
  slpo_soft=slpo.slpo_soft_loss,
  slpo_token=slpo.slpo_token_loss_from_reference,
  slpo_normalized=slpo_normalized.slpo_normalized_loss,
  slpo_length_tempered=slpo_forms.slpo_length_tempered_loss,
  slpo_diff=slpo_forms.slpo_diff_loss,
  # TRL's DPOTrainer loss_type names (TRL 1.16 semantics).
  sigmoid=dpo_variants.sigmoid_loss,
  robust=dpo_variants.robust_loss,
  exo_pair=dpo_variants.exo_pair_loss,
  nca_pair=dpo_variants.nca_pair_loss,
  bco_pair=bco.bco_pair_loss,
  # BCO with the running reward mean of the paper and of TRL before 0.29.
  bco_pair_running=(bco.bco_pair_running_loss, bco.RunningMean.zero),
  sppo_hard=dpo_variants.sppo_hard_loss,
  apo_zero=dpo_variants.apo_zero_loss,
  apo_down=dpo_variants.apo_down_loss,
  discopop=dpo_variants.discopop_loss,
  sigmoid_norm=dpo_variants.sigmoid_norm_loss,
  sft=dpo_variants.sft_loss,
  aot=optimal_transport.aot_loss,
  aot_unpaired=optimal_transport.aot_unpaired_loss,
)


@dataclasses.dataclass(frozen=True)
class WeightedLoss:
  """A weighted sum of table losses (TRL's ``loss_type`` list with
  ``loss_weights``); a single loss is the sum of one.

  Each term reads the hyperparameters it declares from the same keyword
  arguments, so ``beta`` is shared by every term that takes it.

  Attributes:
    terms: ``(spec, weight)`` pairs.
    options: TRL's ``ld_alpha``, ``f_divergence_type`` and
      ``use_weighting``, applied to every term
      (:class:`slpo_jax.losses.DpoOptions`); the defaults change nothing.
  """

  terms: tuple[tuple[LossSpec, float], ...]
  options: dpo_options.DpoOptions = dpo_options.DpoOptions()

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(spec.name for spec, _ in self.terms)

  @property
  def hparams(self) -> tuple[str, ...]:
    """Every term's hyperparameter names, each once."""
    return tuple(
      dict.fromkeys(h for spec, _ in self.terms for h in spec.hparams)
    )

  @property
  def needs_reference(self) -> bool:
    return any(spec.needs_reference for spec, _ in self.terms)

  @property
  def needs_pair_values(self) -> bool:
    return any(spec.needs_pair_values for spec, _ in self.terms)

  @property
  def needs_reference_tokens(self) -> bool:
    return any(spec.needs_reference_tokens for spec, _ in self.terms)

  @property
  def stateful(self) -> bool:
    """Whether a term carries state from batch to batch."""
    return any(spec.stateful for spec, _ in self.terms)

  def initial_state(self) -> dict[str, Any]:
    """The state of every stateful term before the first batch, by name
    (empty when there is none)."""
    return {
      spec.name: spec.initial_state() for spec, _ in self.terms if spec.stateful
    }

  def apply(
    self,
    policy: PairStats,
    reference: PairStats | None = None,
    loss_state: Mapping[str, Any] | None = None,
    **hparams: Any,
  ) -> tuple[dict[str, jax.Array], dict[str, Any]]:
    """Each term's unweighted per-example losses, by table name, and the
    stateful terms' new states (``loss_state`` holds their old ones)."""
    unknown = sorted(set(hparams) - set(self.hparams))
    if unknown:
      raise TypeError(
        f"losses {list(self.names)} take the hyperparameters"
        f" {list(self.hparams)}, not {unknown}"
      )
    loss_state = loss_state or {}
    parts, new_state = {}, {}
    pair_weights = self.options.pair_weights(policy)
    for spec, _ in self.terms:
      parts[spec.name], state = spec.apply(
        *self.options.inputs(spec.name, policy, reference),
        loss_state.get(spec.name),
        **{h: hparams[h] for h in spec.hparams if h in hparams},
      )
      if pair_weights is not None:
        parts[spec.name] = parts[spec.name] * pair_weights
      if spec.stateful:
        new_state[spec.name] = state
    return parts, new_state

  def components(
    self,
    policy: PairStats,
    reference: PairStats | None = None,
    **hparams: Any,
  ) -> dict[str, jax.Array]:
    """Each term's unweighted per-example losses, by table name (stateless
    terms only: a stateful one needs :meth:`apply`)."""
    return self.apply(policy, reference, None, **hparams)[0]

  def __call__(
    self,
    policy: PairStats,
    reference: PairStats | None = None,
    **hparams: Any,
  ) -> jax.Array:
    """Per-example weighted sums of the terms' losses."""
    parts = self.components(policy, reference, **hparams)
    return sum(weight * parts[spec.name] for spec, weight in self.terms)


def weighted_loss(
  names, weights=(), options: dpo_options.DpoOptions | None = None
) -> WeightedLoss:
  """The :class:`WeightedLoss` of table names, weights 1 when not given.

  Raises:
    ValueError: an unknown name, a repeated one, a weight count that does
      not match, or ``options`` the losses do not take
      (:meth:`DpoOptions.check`).
  """
  names = tuple(names)
  weights = tuple(weights) or (1.0,) * len(names)
  if not names:
    raise ValueError("no loss named")
  if len(weights) != len(names):
    raise ValueError(
      f"{len(weights)} weights for the {len(names)} losses {list(names)}"
    )
  if len(set(names)) != len(names):
    raise ValueError(f"a loss is named twice in {list(names)}")
  terms = tuple((loss_spec(name), float(w)) for name, w in zip(names, weights))
  options = options or dpo_options.DpoOptions()
  options.check([spec for spec, _ in terms])
  return WeightedLoss(terms, options)


def loss_spec(name: str) -> LossSpec:
  """The table's entry for ``name``; ValueError naming the choices if none."""
  if name not in LOSSES:
    raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
  return LOSSES[name]
