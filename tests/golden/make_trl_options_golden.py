"""Writes tests/golden/trl_options.json: TRL's DPO losses under its options.

The options are ``ld_alpha`` (LD-DPO), ``f_divergence_type`` with
``f_alpha_divergence_coef`` (f-DPO) and ``use_weighting`` (WPO). Run from
the repository root, in a virtualenv with TRL (see ``make_trl_golden.py``)::

  /tmp/trlenv/bin/python tests/golden/make_trl_options_golden.py

It needs ``trl==1.16.0`` (checked) and PyTorch; the committed file was
generated with trl 1.16.0, torch 2.13.0+cpu and transformers 5.25.0.

As in ``make_trl_golden.py`` TRL's own ``DPOTrainer._compute_loss`` runs on
a trainer whose ``__init__`` never ran, here with the reference computed in
the step (``precompute_ref_logps=False``) so that TRL applies ``ld_alpha``
to the reference's per-token log-probs too. The policy stand-in returns a
``FusedCausalLMOutput`` whose ``log_probs`` are scattered from one leaf
tensor and whose ``log_sum_sq_probs`` (WPO's alignment term) are given
per-token values; the reference stand-in returns its given per-token
log-probs. Recorded per case: the loss and its gradient with respect to
every policy per-token log-prob (``null`` for ``hinge`` with
``use_weighting``: TRL 1.16 multiplies the hinge's output in place, and
autograd refuses to differentiate it).

One change to TRL's code, for ``alpha_divergence`` only: TRL 1.16 computes
that score through ``t.float()`` and a clamp table keyed by float16,
bfloat16 and float32, which raises ``KeyError`` for float64 tensors. The
generator runs a copy of ``_compute_loss`` in which those lines keep the
input's dtype and clamp at 80, TRL's float32 value (the lines are replaced
by exact text, checked); everything else is TRL's code unchanged.
"""

import collections
import json
import pathlib
import sys
import types

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import make_trl_golden as base  # noqa: E402

OUTPUT = pathlib.Path(__file__).with_name("trl_options.json")
TRL_VERSION = "1.16.0"
SEED = 20261207
BATCH = base.BATCH
MAX_LENGTH = base.MAX_LENGTH
PROMPT_LENGTH = base.PROMPT_LENGTH

ALPHA_LINES = (
  (
    "clamp_max = {torch.float16: 11.0, torch.bfloat16: 80.0,"
    " torch.float32: 80.0}[dtype]",
    "clamp_max = 80.0",
  ),
  (
    "t_chosen_float = torch.clamp(t_chosen.float(), max=clamp_max)",
    "t_chosen_float = torch.clamp(t_chosen, max=clamp_max)",
  ),
  (
    "t_rejected_float = torch.clamp(t_rejected.float(), max=clamp_max)",
    "t_rejected_float = torch.clamp(t_rejected, max=clamp_max)",
  ),
)

F_DIVERGENCE_LOSSES = {
  "sigmoid": 0.0,
  "hinge": 0.0,
  "robust": 0.2,
  "exo_pair": 0.1,
  "discopop": 0.0,
  "sigmoid_norm": 0.0,
}
DIVERGENCES = (
  ("forward_kl", 0.5),
  ("js_divergence", 0.5),
  ("alpha_divergence", 0.5),
  ("alpha_divergence", 1.5),
)
LD_LOSSES = {
  "sigmoid": 0.0,
  "robust": 0.2,
  "nca_pair": 0.0,
  "bco_pair": 0.0,
  "sppo_hard": 0.0,
  "apo_zero": 0.0,
  "apo_down": 0.0,
  "discopop": 0.0,
  "sigmoid_norm": 0.0,
  "aot": 0.0,
  "aot_unpaired": 0.0,
}
WEIGHTED_LOSSES = {
  "sigmoid": 0.0,
  "hinge": 0.0,
  "robust": 0.2,
  "exo_pair": 0.1,
  "nca_pair": 0.0,
  "bco_pair": 0.0,
  "sppo_hard": 0.0,
  "apo_zero": 0.0,
  "apo_down": 0.0,
  "discopop": 0.0,
  "sigmoid_norm": 0.0,
}


def _ref_tokens(rng, lengths):
  return [base._tokens(rng, n) for n in lengths]


def _log_sum_sq(rng, tokens):
  """A ``log sum_v p_v^2`` per token, between ``2 log p`` and 0."""
  return [base._f32(2.0 * t * rng.uniform(0.05, 1.0, len(t))) for t in tokens]


def _random_inputs(rng):
  chosen_lengths, rejected_lengths = base._lengths(rng)
  chosen = [base._tokens(rng, n) for n in chosen_lengths]
  rejected = [base._tokens(rng, n) for n in rejected_lengths]
  return {
    'chosen': chosen,
    'rejected': rejected,
    'ref_chosen': _ref_tokens(rng, chosen_lengths),
    'ref_rejected': _ref_tokens(rng, rejected_lengths),
    'chosen_log_sum_sq': _log_sum_sq(rng, chosen),
    'rejected_log_sum_sq': _log_sum_sq(rng, rejected),
  }


def _extreme_inputs(rng):
  """Log-ratio margins of magnitude 50..200, of both signs (see base)."""
  chosen_lengths, rejected_lengths = base._lengths(rng)
  signs = np.where(np.arange(BATCH) % 2 == 0, 1.0, -1.0)
  margins = signs * rng.uniform(50.0, 200.0, BATCH)
  ref_chosen = _ref_tokens(rng, chosen_lengths)
  ref_rejected = _ref_tokens(rng, rejected_lengths)
  chosen, rejected = [], []
  for i in range(BATCH):
    rc, rr = ref_chosen[i].sum(), ref_rejected[i].sum()
    if margins[i] > 0:
      pc = base._tokens(rng, chosen_lengths[i], -1.0, -0.01)
      pr = rr + pc.sum() - rc - margins[i]
      chosen.append(pc)
      rejected.append(base._split(rng, pr, rejected_lengths[i]))
    else:
      pr = base._tokens(rng, rejected_lengths[i], -1.0, -0.01)
      pc = rc + pr.sum() - rr + margins[i]
      chosen.append(base._split(rng, pc, chosen_lengths[i]))
      rejected.append(pr)
  return {
    'chosen': chosen,
    'rejected': rejected,
    'ref_chosen': ref_chosen,
    'ref_rejected': ref_rejected,
    'chosen_log_sum_sq': _log_sum_sq(rng, chosen),
    'rejected_log_sum_sq': _log_sum_sq(rng, rejected),
  }


def _spec(loss_types, weights, smoothing, **options):
  spec = {
    'loss_types': list(loss_types),
    'loss_weights': list(weights),
    'label_smoothing': smoothing,
    'ld_alpha': None,
    'f_divergence_type': "reverse_kl",
    'f_alpha_divergence_coef': 0.5,
    'use_weighting': False,
  }
  spec.update(options)
  return spec


def _case_specs():
  """Yields (spec, beta, extreme)."""
  for loss, smoothing in F_DIVERGENCE_LOSSES.items():
    for kind, coef in DIVERGENCES:
      options = dict(f_divergence_type=kind, f_alpha_divergence_coef=coef)
      yield _spec((loss,), (1.0,), smoothing, **options), 0.1, False
      yield _spec((loss,), (1.0,), smoothing, **options), 0.5, True
  # A coefficient within TRL's 1e-6 of 1 falls back to reverse KL.
  options = dict(f_divergence_type="alpha_divergence")
  near_one = dict(options, f_alpha_divergence_coef=1.0 + 1e-7)
  yield _spec(("sigmoid",), (1.0,), 0.0, **near_one), 0.1, False
  yield _spec(("sigmoid", "sft"), (1.0, 1.0), 0.0, **options), 0.1, False
  for loss, smoothing in LD_LOSSES.items():
    for alpha in (0.0, 0.5):
      yield _spec((loss,), (1.0,), smoothing, ld_alpha=alpha), 0.1, False
    yield _spec((loss,), (1.0,), smoothing, ld_alpha=0.3), 0.5, True
  yield _spec(("sigmoid", "sft"), (1.0, 1.0), 0.0, ld_alpha=0.5), 0.1, False
  mpo = (("sigmoid", "bco_pair", "sft"), (0.8, 0.2, 1.0))
  yield _spec(*mpo, 0.0, ld_alpha=0.5), 0.5, True
  for loss, smoothing in WEIGHTED_LOSSES.items():
    yield _spec((loss,), (1.0,), smoothing, use_weighting=True), 0.1, False
    yield _spec((loss,), (1.0,), smoothing, use_weighting=True), 0.5, True
  both = (("sigmoid", "bco_pair"), (0.8, 0.2))
  yield _spec(*both, 0.0, use_weighting=True), 0.1, False
  # All three at once.
  every = dict(
    use_weighting=True, ld_alpha=0.5, f_divergence_type="js_divergence"
  )
  yield _spec(("sigmoid",), (1.0,), 0.0, **every), 0.1, False
  yield _spec(("robust",), (1.0,), 0.2, **every), 0.5, True
  every["f_divergence_type"] = "alpha_divergence"
  yield _spec(("sigmoid_norm",), (1.0,), 0.0, **every), 0.1, False


class _PolicyModel:
  """The policy: TRL's fused-head output from given per-token values."""

  training = False
  is_gradient_checkpointing = False
  _modules = {}  # What accelerate's is_peft_model looks at: no submodules.

  def __init__(self, leaf, log_sum_sq):
    self.leaf, self.log_sum_sq = leaf, log_sum_sq

  def __call__(
    self, input_ids, attention_mask, use_cache, labels, fused_lm_head
  ):
    from trl.trainer.utils import FusedCausalLMOutput

    assert fused_lm_head and not use_cache
    assert attention_mask.shape == input_ids.shape
    mask = labels[:, 1:] != -100
    assert int(mask.sum()) == self.leaf.numel()
    zeros = self.leaf.new_zeros(mask.shape)
    return FusedCausalLMOutput(
      log_probs=zeros.masked_scatter(mask, self.leaf),
      entropy=zeros.detach(),
      log_sum_sq_probs=zeros.detach().masked_scatter(mask, self.log_sum_sq),
      mean_logits=zeros.detach(),
      is_top1=zeros.bool(),
      label_mask=mask,
    )


class _ReferenceModel:
  """The reference: its given per-token log-probs, no gradient."""

  def __init__(self, values):
    self.values = values

  def __call__(self, input_ids, attention_mask, use_cache, labels, **kwargs):
    from trl.trainer.utils import FusedCausalLMOutput

    assert kwargs == {"fused_lm_head": True}
    mask = labels[:, 1:] != -100
    zeros = self.values.new_zeros(mask.shape)
    return FusedCausalLMOutput(
      log_probs=zeros.masked_scatter(mask, self.values), label_mask=mask
    )


def _compute_loss_for_alpha():
  """TRL's ``_compute_loss`` with the float64 alpha-divergence lines."""
  import inspect
  import textwrap

  from trl.trainer import dpo_trainer

  source = textwrap.dedent(
    inspect.getsource(dpo_trainer.DPOTrainer._compute_loss)
  )
  for old, new in ALPHA_LINES:
    assert source.count(old) == 1, old
    source = source.replace(old, new)
  namespace = {}
  exec(
    compile(source, dpo_trainer.__file__, "exec"), vars(dpo_trainer), namespace
  )
  return namespace["_compute_loss"]


def _run(spec, beta, inputs):
  import torch
  from trl import DPOTrainer

  rows = list(inputs['chosen']) + list(inputs['rejected'])
  width = PROMPT_LENGTH + MAX_LENGTH
  input_ids = torch.zeros(len(rows), width, dtype=torch.long)
  attention_mask = torch.zeros(len(rows), width, dtype=torch.long)
  completion_mask = torch.zeros(len(rows), width, dtype=torch.long)
  for r, tokens in enumerate(rows):
    end = PROMPT_LENGTH + len(tokens)
    input_ids[r, :end] = torch.arange(1, end + 1)
    attention_mask[r, :end] = 1
    completion_mask[r, PROMPT_LENGTH:end] = 1
  flat = lambda parts: torch.tensor(np.concatenate(parts), dtype=torch.float64)
  leaf = flat(rows).requires_grad_(True)
  log_sum_sq = flat(
    list(inputs['chosen_log_sum_sq']) + list(inputs['rejected_log_sum_sq'])
  )
  reference = flat(list(inputs['ref_chosen']) + list(inputs['ref_rejected']))
  model = _PolicyModel(leaf, log_sum_sq)

  trainer = object.__new__(DPOTrainer)
  attrs = {
    'model': model,
    'ref_model': _ReferenceModel(reference),
    'accelerator': base._Accelerator(torch.device("cpu")),
    'args': types.SimpleNamespace(
      discopop_tau=base.DEFAULT_TAU, gradient_checkpointing_kwargs=None
    ),
    'beta': beta,
    'label_smoothing': spec['label_smoothing'],
    'loss_types': spec['loss_types'],
    'loss_weights': spec['loss_weights'],
    'f_divergence_type': spec['f_divergence_type'],
    'f_alpha_divergence_coef': spec['f_alpha_divergence_coef'],
    'use_weighting': spec['use_weighting'],
    'ld_alpha': spec['ld_alpha'],
    'precompute_ref_logps': False,
    'aux_loss_enabled': False,
    '_metrics': collections.defaultdict(lambda: collections.defaultdict(list)),
    '_total_train_tokens': 0,
  }
  for key, value in attrs.items():
    setattr(trainer, key, value)
  batch = {
    'input_ids': input_ids,
    'attention_mask': attention_mask,
    'completion_mask': completion_mask,
  }
  if spec['f_divergence_type'] == "alpha_divergence":
    loss = _compute_loss_for_alpha()(trainer, model, batch, False)
  else:
    loss = trainer.compute_loss(model, batch)
  try:
    loss.backward()
  except RuntimeError as error:
    # TRL 1.16 weights in place (``per_sequence_loss *= ...``), which
    # autograd refuses after torch.relu (hinge) saved its output.
    assert "modified by an inplace operation" in str(error), error
    assert spec['use_weighting'] and "hinge" in spec['loss_types'], spec
    return float(loss.detach()), None, None
  sizes = [len(r) for r in rows]
  grads = np.split(leaf.grad.numpy(), np.cumsum(sizes)[:-1])
  return float(loss.detach()), grads[:BATCH], grads[BATCH:]


def _label(spec, beta, extreme):
  label = "+".join(spec['loss_types']) + f"/beta={beta}"
  if spec['label_smoothing']:
    label += f"/label_smoothing={spec['label_smoothing']}"
  if spec['f_divergence_type'] != "reverse_kl":
    label += f"/{spec['f_divergence_type']}"
    if spec['f_divergence_type'] == "alpha_divergence":
      label += f"={spec['f_alpha_divergence_coef']}"
  if spec['ld_alpha'] is not None:
    label += f"/ld_alpha={spec['ld_alpha']}"
  if spec['use_weighting']:
    label += "/use_weighting"
  return label + ("/extreme" if extreme else "/random")


def main():
  import torch
  import trl

  if trl.__version__ != TRL_VERSION:
    raise SystemExit(f"needs trl=={TRL_VERSION}, found {trl.__version__}")
  torch.set_default_dtype(torch.float64)
  rng = np.random.default_rng(SEED)
  cases = []
  for spec, beta, extreme in _case_specs():
    inputs = _extreme_inputs(rng) if extreme else _random_inputs(rng)
    loss, grad_chosen, grad_rejected = _run(spec, beta, inputs)
    if not np.isfinite(loss):
      # discopop's exp(-h) overflows for the scores of forward KL and alpha
      # at margins of 50..200, in TRL as anywhere: no golden value.
      assert extreme and spec['loss_types'] == ["discopop"], spec
      print(f"skipped {_label(spec, beta, extreme)}: loss {loss}")
      continue
    as_lists = lambda rows: (
      None if rows is None else [np.asarray(r).tolist() for r in rows]
    )
    cases.append(
      {
        'name': _label(spec, beta, extreme),
        **spec,
        'beta': beta,
        'discopop_tau': base.DEFAULT_TAU,
        'policy_chosen_token_logps': as_lists(inputs['chosen']),
        'policy_rejected_token_logps': as_lists(inputs['rejected']),
        'reference_chosen_token_logps': as_lists(inputs['ref_chosen']),
        'reference_rejected_token_logps': as_lists(inputs['ref_rejected']),
        'policy_chosen_token_log_sum_sq_probs': as_lists(
          inputs['chosen_log_sum_sq']
        ),
        'policy_rejected_token_log_sum_sq_probs': as_lists(
          inputs['rejected_log_sum_sq']
        ),
        'loss': loss,
        'grad_policy_chosen_token_logps': as_lists(grad_chosen),
        'grad_policy_rejected_token_logps': as_lists(grad_rejected),
      }
    )
  names = [case['name'] for case in cases]
  assert len(set(names)) == len(names), names
  header = {
    'trl_version': trl.__version__,
    'torch_version': torch.__version__,
    'generated_by': "tests/golden/make_trl_options_golden.py",
  }
  # One case per line: the file stays small and its diffs readable.
  lines = [json.dumps(case) for case in cases]
  OUTPUT.write_text(
    json.dumps(header)[:-1] + ', "cases": [\n' + ",\n".join(lines) + "\n]}\n"
  )
  print(f"wrote {len(cases)} cases to {OUTPUT}")


if __name__ == "__main__":
  main()
