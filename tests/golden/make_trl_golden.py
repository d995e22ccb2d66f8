"""Writes tests/golden/trl_losses.json from TRL's own DPO losses.

Run from the repository root, in a virtualenv of its own (TRL is not needed
by the tests that read the file, and is not installed into ``.venv``)::

  python3 -m venv /tmp/trlenv
  /tmp/trlenv/bin/pip install trl==1.16.0 torch
  /tmp/trlenv/bin/python tests/golden/make_trl_golden.py

It needs ``trl==1.16.0`` (checked) and PyTorch; the committed file was
generated with trl 1.16.0 and torch 2.13.0+cpu.

What runs is TRL's real code, not a transcription: ``DPOTrainer._compute_loss``
(the method behind ``DPOTrainer.compute_loss``) is called on a trainer made
with ``object.__new__(DPOTrainer)``, so ``__init__`` never runs, with the
attributes the method reads set by hand: ``model`` (for ``.training``),
``accelerator`` (``device``, ``gather`` and ``gather_for_metrics`` as
identities), ``args.discopop_tau``, ``beta``, ``label_smoothing``,
``loss_types``, ``loss_weights``, ``f_divergence_type='reverse_kl'``,
``use_weighting=False``, ``ld_alpha=None``, ``precompute_ref_logps=True``,
``aux_loss_enabled=False``, ``_metrics`` and ``_total_train_tokens``.

The model is a stand-in for a causal LM patched by TRL's
``add_fused_lm_head``: called with ``labels`` and ``fused_lm_head=True``, it
returns a ``FusedCausalLMOutput`` whose ``log_probs`` (shape
``[2 * B, T - 1]``, rows ``[chosen..., rejected...]``, zero where the shifted
label is ``-100``) are scattered, as TRL's kernel does, from one leaf tensor
holding the policy's per-token log-probs of every completion token. The other
per-token fields the method reads for its metrics are zeros. The reference
log-probs are given precomputed, at sequence level, as ``ref_chosen_logps``
and ``ref_rejected_logps`` in the batch. Each prompt is two tokens long, so
``completion_mask`` and its shift count the same completion tokens.

Recorded per case: TRL's returned loss (the weighted sum over loss types of
the batch mean), its gradient w.r.t. every policy per-token log-prob, and,
for single losses that are per sequence, the ``per_sequence_loss`` tensor the
method builds, read from its frame with ``sys.settrace`` and cross-checked
against the loss of a batch of that one row. ``aot`` and ``aot_unpaired``
(which sort over the batch) and ``sft`` (a mean over the batch's chosen
tokens) get ``null`` there.

Everything runs in float64 (``torch.set_default_dtype``, since ``exo_pair``
builds its epsilon with ``torch.tensor``), and every input is a float32
number, so that a float32 implementation sees exactly the same inputs.
"""

import json
import pathlib
import sys
import types

import numpy as np

OUTPUT = pathlib.Path(__file__).with_name("trl_losses.json")
TRL_VERSION = "1.16.0"
SEED = 20250611
BATCH = 6
MAX_LENGTH = 7
PROMPT_LENGTH = 2
DEFAULT_TAU = 0.05  # DPOConfig.discopop_tau's default.
LOSS_LINE = "loss += per_sequence_loss.mean() * loss_weight"

SINGLE_LOSSES = (
  "sigmoid",
  "robust",
  "exo_pair",
  "nca_pair",
  "bco_pair",
  "sppo_hard",
  "aot",
  "aot_unpaired",
  "apo_zero",
  "apo_down",
  "discopop",
  "sft",
  "sigmoid_norm",
  "ipo",
  "hinge",
)
# Losses whose per_sequence_loss is not one value per pair of the batch.
BATCH_LEVEL = ("aot", "aot_unpaired", "sft")
SMOOTHINGS = {
  "robust": (0.0, 0.2),
  "exo_pair": (0.1, 0.3),  # exo_pair's epsilon, which must be > 0.
  "aot": (0.0, 0.2),
  "aot_unpaired": (0.0, 0.2),
}
COMBINATIONS = {
  "mpo": (("sigmoid", "bco_pair", "sft"), (0.8, 0.2, 1.0)),
  "rpo": (("sigmoid", "sft"), (1.0, 1.0)),
}


def _f32(x):
  """Rounds to float32 and returns float64, so both dtypes see one value."""
  return np.asarray(x, np.float32).astype(np.float64)


def _lengths(rng):
  """Completion lengths in 1..MAX_LENGTH, chosen and rejected not all equal."""
  while True:
    chosen = rng.integers(1, MAX_LENGTH + 1, BATCH)
    rejected = rng.integers(1, MAX_LENGTH + 1, BATCH)
    if (chosen != rejected).any():
      return chosen, rejected


def _tokens(rng, length, low=-3.0, high=-0.01):
  return _f32(rng.uniform(low, high, length))


def _split(rng, total, length):
  """Splits a negative ``total`` into ``length`` negative token log-probs."""
  weights = rng.dirichlet(np.full(length, 2.0))
  return _f32(total * weights)


def _random_inputs(rng):
  """Token log-probs uniform in [-3, -0.01]; references likewise, summed."""
  chosen_lengths, rejected_lengths = _lengths(rng)
  return {
    'chosen': [_tokens(rng, n) for n in chosen_lengths],
    'rejected': [_tokens(rng, n) for n in rejected_lengths],
    'ref_chosen': _f32([_tokens(rng, n).sum() for n in chosen_lengths]),
    'ref_rejected': _f32([_tokens(rng, n).sum() for n in rejected_lengths]),
  }


def _extreme_inputs(rng):
  """Margins of magnitude 50..200, of both signs.

  The references are moderate; the policy's dispreferred side of each pair
  takes the whole margin (a very negative log-prob, split over its tokens),
  the other side is moderate.
  """
  chosen_lengths, rejected_lengths = _lengths(rng)
  signs = np.where(np.arange(BATCH) % 2 == 0, 1.0, -1.0)
  margins = signs * rng.uniform(50.0, 200.0, BATCH)
  ref_chosen = _f32([_tokens(rng, n).sum() for n in chosen_lengths])
  ref_rejected = _f32([_tokens(rng, n).sum() for n in rejected_lengths])
  chosen, rejected = [], []
  for i in range(BATCH):
    if margins[i] > 0:
      # margin = (pc - rc) - (pr - rr): the policy all but rules out rejected.
      pc = _tokens(rng, chosen_lengths[i], -1.0, -0.01)
      pr = ref_rejected[i] + pc.sum() - ref_chosen[i] - margins[i]
      chosen.append(pc)
      rejected.append(_split(rng, pr, rejected_lengths[i]))
    else:
      pr = _tokens(rng, rejected_lengths[i], -1.0, -0.01)
      pc = ref_chosen[i] + pr.sum() - ref_rejected[i] + margins[i]
      chosen.append(_split(rng, pc, chosen_lengths[i]))
      rejected.append(pr)
  return {
    'chosen': chosen,
    'rejected': rejected,
    'ref_chosen': ref_chosen,
    'ref_rejected': ref_rejected,
  }


def _case_specs():
  """Yields (name, loss_types, loss_weights, beta, smoothing, tau, extreme)."""
  for loss in SINGLE_LOSSES:
    smoothings = SMOOTHINGS.get(loss, (0.0,))
    taus = (DEFAULT_TAU, 0.5) if loss == "discopop" else (DEFAULT_TAU,)
    for beta in (0.1, 0.5):
      for smoothing in smoothings:
        for tau in taus:
          yield loss, (loss,), (1.0,), beta, smoothing, tau, False
    yield loss, (loss,), (1.0,), 0.5, smoothings[-1], DEFAULT_TAU, True
  # A large beta, and label smoothing, which 'sigmoid' does not read in 1.16.
  yield "sigmoid", ("sigmoid",), (1.0,), 2.0, 0.0, DEFAULT_TAU, False
  yield "sigmoid", ("sigmoid",), (1.0,), 0.1, 0.2, DEFAULT_TAU, False
  for name, (loss_types, weights) in COMBINATIONS.items():
    for beta in (0.1, 0.5):
      yield name, loss_types, weights, beta, 0.0, DEFAULT_TAU, False
    yield name, loss_types, weights, 0.5, 0.0, DEFAULT_TAU, True


class _Accelerator:
  """What ``_compute_loss`` uses of ``accelerate.Accelerator``, one process."""

  def __init__(self, device):
    self.device = device

  def gather(self, tensor):
    return tensor

  def gather_for_metrics(self, tensor):
    return tensor


class _FusedHeadModel:
  """A causal LM with TRL's fused LM head whose log-probs are given leaves.

  Args:
    leaf: the per-token log-probs of the completion tokens, flattened in row
      order over the ``[chosen..., rejected...]`` batch.
  """

  training = False

  def __init__(self, leaf):
    self.leaf = leaf

  def __call__(
    self, input_ids, attention_mask, use_cache, labels, fused_lm_head
  ):
    from trl.trainer.utils import FusedCausalLMOutput

    assert fused_lm_head and not use_cache
    assert attention_mask.shape == input_ids.shape
    mask = labels[:, 1:] != -100  # The label of position t is token t + 1.
    assert int(mask.sum()) == self.leaf.numel()
    zeros = self.leaf.new_zeros(mask.shape)
    return FusedCausalLMOutput(
      log_probs=zeros.masked_scatter(mask, self.leaf),
      entropy=zeros.detach(),
      mean_logits=zeros.detach(),
      is_top1=zeros.bool(),
      label_mask=mask,
    )


def _batch(chosen, rejected, ref_chosen, ref_rejected):
  """The padded batch ``_compute_loss`` reads, and the log-prob leaf."""
  import torch

  rows = list(chosen) + list(rejected)
  width = PROMPT_LENGTH + MAX_LENGTH
  input_ids = torch.zeros(len(rows), width, dtype=torch.long)
  attention_mask = torch.zeros(len(rows), width, dtype=torch.long)
  completion_mask = torch.zeros(len(rows), width, dtype=torch.long)
  for r, tokens in enumerate(rows):
    end = PROMPT_LENGTH + len(tokens)
    input_ids[r, :end] = torch.arange(1, end + 1)
    attention_mask[r, :end] = 1
    completion_mask[r, PROMPT_LENGTH:end] = 1
  leaf = torch.tensor(np.concatenate(rows), dtype=torch.float64)
  leaf.requires_grad_(True)
  inputs = {
    'input_ids': input_ids,
    'attention_mask': attention_mask,
    'completion_mask': completion_mask,
    'ref_chosen_logps': torch.tensor(ref_chosen, dtype=torch.float64),
    'ref_rejected_logps': torch.tensor(ref_rejected, dtype=torch.float64),
  }
  return inputs, leaf


def _trainer(model, loss_types, loss_weights, beta, smoothing, tau):
  """A DPOTrainer whose ``__init__`` never ran, with what the loss reads."""
  import collections

  import torch
  from trl import DPOTrainer

  trainer = object.__new__(DPOTrainer)
  attrs = {
    'model': model,
    'accelerator': _Accelerator(torch.device("cpu")),
    'args': types.SimpleNamespace(discopop_tau=tau),
    'beta': beta,
    'label_smoothing': smoothing,
    'loss_types': list(loss_types),
    'loss_weights': list(loss_weights),
    'f_divergence_type': "reverse_kl",
    'use_weighting': False,
    'ld_alpha': None,
    'precompute_ref_logps': True,
    'aux_loss_enabled': False,
    '_metrics': collections.defaultdict(lambda: collections.defaultdict(list)),
    '_total_train_tokens': 0,
  }
  for key, value in attrs.items():
    setattr(trainer, key, value)
  return trainer


def _loss_line():
  """The line of ``_compute_loss`` where ``per_sequence_loss`` is final."""
  import inspect

  from trl import DPOTrainer

  lines, start = inspect.getsourcelines(DPOTrainer._compute_loss)
  hits = [i for i, line in enumerate(lines) if line.strip() == LOSS_LINE]
  assert len(hits) == 1, hits
  return start + hits[0]


def _run(spec, inputs, rows=None):
  """Runs TRL's loss; returns loss, per-sequence losses and token grads."""
  from trl import DPOTrainer

  _, loss_types, loss_weights, beta, smoothing, tau, _ = spec
  rows = range(BATCH) if rows is None else rows
  batch, leaf = _batch(
    [inputs['chosen'][i] for i in rows],
    [inputs['rejected'][i] for i in rows],
    inputs['ref_chosen'][list(rows)],
    inputs['ref_rejected'][list(rows)],
  )
  model = _FusedHeadModel(leaf)
  trainer = _trainer(model, loss_types, loss_weights, beta, smoothing, tau)

  code, line, captured = DPOTrainer._compute_loss.__code__, _loss_line(), []

  def local_trace(frame, event, arg):
    del arg
    if event == "line" and frame.f_lineno == line:
      values = frame.f_locals
      captured.append(
        (values['loss_type'], values['per_sequence_loss'].detach().clone())
      )
    return local_trace

  def global_trace(frame, event, arg):
    del event, arg
    return local_trace if frame.f_code is code else None

  sys.settrace(global_trace)
  try:
    loss = trainer.compute_loss(model, batch)
  finally:
    sys.settrace(None)
  assert [name for name, _ in captured] == list(loss_types), captured
  loss.backward()
  grads = leaf.grad.numpy()
  sizes = [len(inputs['chosen'][i]) for i in rows]
  sizes += [len(inputs['rejected'][i]) for i in rows]
  grads = np.split(grads, np.cumsum(sizes)[:-1])
  per_type = [values.numpy() for _, values in captured]
  loss = float(loss.detach())
  return loss, per_type, grads[: len(rows)], grads[len(rows) :]


def _make_case(spec, inputs):
  name, loss_types, loss_weights, beta, smoothing, tau, extreme = spec
  loss, per_type, grad_chosen, grad_rejected = _run(spec, inputs)
  weighted = sum(w * v.mean() for w, v in zip(loss_weights, per_type))
  np.testing.assert_allclose(weighted, loss, rtol=1e-13)
  per_sequence = None
  if len(loss_types) == 1 and loss_types[0] not in BATCH_LEVEL:
    per_sequence = per_type[0]
    assert per_sequence.shape == (BATCH,)
    one_row = [_run(spec, inputs, rows=[i])[0] for i in range(BATCH)]
    np.testing.assert_allclose(one_row, per_sequence, rtol=1e-13)
    per_sequence = per_sequence.tolist()
  label = f"{name}/beta={beta}"
  if loss_types[0] in SMOOTHINGS or smoothing:
    label += f"/label_smoothing={smoothing}"
  if "discopop" in loss_types:
    label += f"/tau={tau}"
  label += "/extreme" if extreme else "/random"
  return {
    'name': label,
    'loss_types': list(loss_types),
    'loss_weights': list(loss_weights),
    'beta': beta,
    'label_smoothing': smoothing,
    'discopop_tau': tau,
    'policy_chosen_token_logps': [r.tolist() for r in inputs['chosen']],
    'policy_rejected_token_logps': [r.tolist() for r in inputs['rejected']],
    'reference_chosen_logps': inputs['ref_chosen'].tolist(),
    'reference_rejected_logps': inputs['ref_rejected'].tolist(),
    'loss': loss,
    'per_sequence_loss': per_sequence,
    'grad_policy_chosen_token_logps': [g.tolist() for g in grad_chosen],
    'grad_policy_rejected_token_logps': [g.tolist() for g in grad_rejected],
  }


def main():
  import torch
  import trl

  if trl.__version__ != TRL_VERSION:
    raise SystemExit(f"needs trl=={TRL_VERSION}, found {trl.__version__}")
  torch.set_default_dtype(torch.float64)
  rng = np.random.default_rng(SEED)
  cases = []
  for spec in _case_specs():
    extreme = spec[-1]
    inputs = _extreme_inputs(rng) if extreme else _random_inputs(rng)
    cases.append(_make_case(spec, inputs))
    assert np.isfinite(cases[-1]['loss']), cases[-1]['name']
  names = [case['name'] for case in cases]
  assert len(set(names)) == len(names)
  OUTPUT.write_text(
    json.dumps(
      {
        'trl_version': trl.__version__,
        'torch_version': torch.__version__,
        'generated_by': "tests/golden/make_trl_golden.py",
        'cases': cases,
      },
      indent=1,
    )
    + "\n"
  )
  print(f"wrote {len(cases)} cases to {OUTPUT}")


if __name__ == "__main__":
  main()
