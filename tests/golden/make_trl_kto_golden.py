"""Writes tests/golden/trl_kto.json from TRL's own KTO loss.

Run from the repository root, in a virtualenv with TRL (see
``make_trl_golden.py``)::

  /tmp/trlenv/bin/python tests/golden/make_trl_kto_golden.py

It needs ``trl==1.16.0`` (checked) and PyTorch; the committed file was
generated with trl 1.16.0, torch 2.13.0+cpu and transformers 5.25.0.

TRL's ``KTOTrainer._compute_loss`` runs on a trainer whose ``__init__``
never ran (as in ``make_trl_golden.py``), with the reference computed in
the step. The policy and reference stand-ins return TRL's fused-head output
from given per-token log-probs: for the batch's rows (the policy's from one
leaf tensor) and for its KL rows, each prompt with another example's
completion, which the stand-ins tell apart by their token ids. Recorded per
case: the loss (TRL's mean over the batch's examples) and its gradient with
respect to every policy per-token log-prob of the batch's rows.
"""

import collections
import json
import pathlib
import sys
import types

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import make_trl_golden as base  # noqa: E402

OUTPUT = pathlib.Path(__file__).with_name("trl_kto.json")
TRL_VERSION = "1.16.0"
SEED = 20261208
BATCH = 6
MAX_LENGTH = 7
PROMPT_LENGTH = 2
KL_ID_OFFSET = 1000  # KL rows' token ids, so the stand-ins know them.


def _inputs(rng, kl_shift):
  """Per-token log-probs of both models on the rows and the KL rows.

  ``kl_shift`` moves the policy's KL log-probs up or down, so that the
  batch's KL estimate is positive (z > 0) or clamped to 0.
  """
  lengths = rng.integers(1, MAX_LENGTH + 1, BATCH)
  # The KL row of example i holds the completion of example i - 1.
  kl_lengths = np.roll(lengths, 1)
  tokens = lambda n, low=-3.0: base._tokens(rng, n, low)
  labels = rng.permutation(np.arange(BATCH) % 2 == 0)
  return {
    'labels': labels.tolist(),
    'policy': [tokens(n) for n in lengths],
    'reference': [tokens(n) for n in lengths],
    'policy_kl': [base._f32(tokens(n) + kl_shift / n) for n in kl_lengths],
    'reference_kl': [tokens(n) for n in kl_lengths],
  }


class _Model:
  """A model with TRL's fused head, its log-probs given per row set."""

  training = False
  is_gradient_checkpointing = False
  _modules = {}  # What accelerate's is_peft_model looks at: no submodules.

  def __init__(self, rows, kl_rows):
    self.rows, self.kl_rows = rows, kl_rows

  def __call__(
    self, input_ids, attention_mask, use_cache, labels, fused_lm_head
  ):
    from trl.trainer.utils import FusedCausalLMOutput

    assert fused_lm_head and not use_cache
    assert attention_mask.shape == input_ids.shape
    is_kl = bool((input_ids >= KL_ID_OFFSET).any())
    values = self.kl_rows if is_kl else self.rows
    mask = labels[:, 1:] != -100
    assert int(mask.sum()) == values.numel()
    zeros = values.new_zeros(mask.shape)
    return FusedCausalLMOutput(
      log_probs=zeros.masked_scatter(mask, values),
      entropy=zeros.detach(),
      mean_logits=zeros.detach(),
      is_top1=zeros.bool(),
      label_mask=mask,
    )


def _rows(parts, offset=0):
  import torch

  width = PROMPT_LENGTH + MAX_LENGTH
  ids = torch.zeros(len(parts), width, dtype=torch.long)
  attention = torch.zeros(len(parts), width, dtype=torch.long)
  completion = torch.zeros(len(parts), width, dtype=torch.long)
  for r, tokens in enumerate(parts):
    end = PROMPT_LENGTH + len(tokens)
    ids[r, :end] = torch.arange(1, end + 1) + offset
    attention[r, :end] = 1
    completion[r, PROMPT_LENGTH:end] = 1
  return ids, attention, completion


def _run(inputs, beta, desirable_weight, undesirable_weight):
  import torch
  from trl import KTOTrainer

  flat = lambda parts: torch.tensor(np.concatenate(parts), dtype=torch.float64)
  leaf = flat(inputs['policy']).requires_grad_(True)
  policy = _Model(leaf, flat(inputs['policy_kl']))
  reference = _Model(flat(inputs['reference']), flat(inputs['reference_kl']))
  ids, attention, completion = _rows(inputs['policy'])
  kl_ids, kl_attention, kl_completion = _rows(inputs['policy_kl'], KL_ID_OFFSET)
  batch = {
    'input_ids': ids,
    'attention_mask': attention,
    'completion_mask': completion,
    'KL_input_ids': kl_ids,
    'KL_attention_mask': kl_attention,
    'KL_completion_mask': kl_completion,
    'label': torch.tensor(inputs['labels']),
  }
  trainer = object.__new__(KTOTrainer)
  attrs = {
    'model': policy,
    'ref_model': reference,
    'accelerator': base._Accelerator(torch.device("cpu")),
    'args': types.SimpleNamespace(gradient_checkpointing_kwargs=None),
    'beta': beta,
    'desirable_weight': desirable_weight,
    'undesirable_weight': undesirable_weight,
    'loss_type': "kto",
    'calculate_KL': True,
    'precompute_ref_logps': False,
    'aux_loss_enabled': False,
    '_metrics': collections.defaultdict(lambda: collections.defaultdict(list)),
    '_total_train_tokens': 0,
    '_tp_size': 1,
  }
  for key, value in attrs.items():
    setattr(trainer, key, value)
  loss = trainer.compute_loss(policy, batch)
  loss.backward()
  grads = np.split(
    leaf.grad.numpy(), np.cumsum([len(t) for t in inputs['policy']])[:-1]
  )
  kl = trainer._metrics["eval"]["kl"][-1]
  return float(loss.detach()), grads, kl


def main():
  import torch
  import trl

  if trl.__version__ != TRL_VERSION:
    raise SystemExit(f"needs trl=={TRL_VERSION}, found {trl.__version__}")
  torch.set_default_dtype(torch.float64)
  rng = np.random.default_rng(SEED)
  cases = []
  for kl_shift, kl_name in ((3.0, "positive_kl"), (-3.0, "clamped_kl")):
    for beta, weights in (
      (0.1, (1.0, 1.0)),
      (0.5, (1.0, 1.33)),
      (2.0, (0.8, 1.0)),
    ):
      inputs = _inputs(rng, kl_shift)
      loss, grads, kl = _run(inputs, beta, *weights)
      assert (kl > 0) == (kl_name == "positive_kl"), (kl, kl_name)
      cases.append(
        {
          'name': f"kto/beta={beta}/weights={weights}/{kl_name}",
          'beta': beta,
          'desirable_weight': weights[0],
          'undesirable_weight': weights[1],
          'desirable': inputs['labels'],
          **{
            f"{key}_token_logps": [np.asarray(t).tolist() for t in inputs[key]]
            for key in ('policy', 'reference', 'policy_kl', 'reference_kl')
          },
          'loss': loss,
          'kl': kl,
          'grad_policy_token_logps': [g.tolist() for g in grads],
        }
      )
  header = {
    'trl_version': trl.__version__,
    'torch_version': torch.__version__,
    'generated_by': "tests/golden/make_trl_kto_golden.py",
  }
  lines = [json.dumps(case) for case in cases]
  OUTPUT.write_text(
    json.dumps(header)[:-1] + ', "cases": [\n' + ",\n".join(lines) + "\n]}\n"
  )
  print(f"wrote {len(cases)} cases to {OUTPUT}")


if __name__ == "__main__":
  main()
