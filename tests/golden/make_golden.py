"""Writes tests/golden/losses.json from implementations independent of ours.

Run from the repository root, once, with PyTorch and TRL installed (neither is
needed by the tests that read the file)::

  pip install torch trl
  python tests/golden/make_golden.py

Sources:

* DPO, cDPO and IPO: a PyTorch transcription of ``preference_loss`` from the
  reference DPO implementation (eric-mitchell/direct-preference-optimization,
  ``trainers.py``), evaluated in float64. The same values are cross-checked
  against TRL's ``CPOTrainer.cpo_loss`` fed with log-ratios, which is the same
  function of the margin.
* SLiC hinge and SimPO: TRL's ``CPOTrainer.cpo_loss`` (loss types ``hinge``
  and ``simpo``; SimPO is fed length-averaged log-probs, as TRL's trainer does).
* ORPO: TRL's ``ORPOTrainer.odds_ratio_loss`` (computed in float32 by TRL)
  plus the chosen response's per-token negative log-likelihood.

Inputs are drawn with a fixed seed and rounded to float32, so that the float32
library and the float64 references see the same numbers.
"""

import json
import os
import pathlib
import types

import numpy as np
import torch
import torch.nn.functional as F

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import trl  # noqa: E402
from trl.experimental.cpo import CPOTrainer  # noqa: E402
from trl.experimental.orpo import ORPOTrainer  # noqa: E402

OUTPUT = pathlib.Path(__file__).with_name("losses.json")
SEED = 20240521
BATCH = 16


def preference_loss(
  policy_chosen_logps,
  policy_rejected_logps,
  reference_chosen_logps,
  reference_rejected_logps,
  beta,
  label_smoothing=0.0,
  ipo=False,
  reference_free=False,
):
  """Transcription of the reference DPO implementation's preference_loss."""
  pi_logratios = policy_chosen_logps - policy_rejected_logps
  ref_logratios = reference_chosen_logps - reference_rejected_logps
  if reference_free:
    ref_logratios = 0
  logits = pi_logratios - ref_logratios
  if ipo:
    losses = (logits - 1 / (2 * beta)) ** 2
  else:
    losses = (
      -F.logsigmoid(beta * logits) * (1 - label_smoothing)
      - F.logsigmoid(-beta * logits) * label_smoothing
    )
  chosen_rewards = beta * (policy_chosen_logps - reference_chosen_logps)
  rejected_rewards = beta * (policy_rejected_logps - reference_rejected_logps)
  return losses, chosen_rewards, rejected_rewards


def _trl_self(**attrs):
  """The attributes TRL's loss methods read from their trainer."""
  defaults = dict(
    alpha=0.0,
    label_smoothing=0.0,
    simpo_gamma=0.0,
    accelerator=types.SimpleNamespace(device="cpu"),
  )
  return types.SimpleNamespace(**{**defaults, **attrs})


def _f32(x):
  return np.asarray(x, np.float32).astype(np.float64)


def _t(x):
  return torch.tensor(x, dtype=torch.float64)


def _reference_inputs(rng):
  """Sequence log-probs with margins spread over both signs."""
  policy_chosen = -rng.uniform(1.0, 60.0, BATCH)
  policy_rejected = -rng.uniform(1.0, 60.0, BATCH)
  reference_chosen = policy_chosen + rng.normal(0.0, 3.0, BATCH)
  reference_rejected = policy_rejected + rng.normal(0.0, 3.0, BATCH)
  # The first example sits exactly at the reference (margin 0).
  reference_chosen[0] = policy_chosen[0]
  reference_rejected[0] = policy_rejected[0]
  return {
    "policy_chosen_logps": _f32(np.minimum(policy_chosen, -1e-3)),
    "policy_rejected_logps": _f32(np.minimum(policy_rejected, -1e-3)),
    "reference_chosen_logps": _f32(np.minimum(reference_chosen, -1e-3)),
    "reference_rejected_logps": _f32(np.minimum(reference_rejected, -1e-3)),
  }


def _length_inputs(rng):
  chosen_lengths = rng.integers(1, 21, BATCH)
  rejected_lengths = rng.integers(1, 21, BATCH)
  return {
    "policy_chosen_logps": _f32(
      -rng.uniform(0.01, 3.0, BATCH) * chosen_lengths
    ),
    "policy_rejected_logps": _f32(
      -rng.uniform(0.01, 3.0, BATCH) * rejected_lengths
    ),
    "chosen_lengths": chosen_lengths.astype(np.float64),
    "rejected_lengths": rejected_lengths.astype(np.float64),
  }


def _margins(inputs):
  chosen = _t(inputs["policy_chosen_logps"]) - _t(
    inputs["reference_chosen_logps"]
  )
  rejected = _t(inputs["policy_rejected_logps"]) - _t(
    inputs["reference_rejected_logps"]
  )
  return chosen, rejected


def _case(loss, params, inputs, expected, source, **extra):
  return {
    "loss": loss,
    "params": params,
    "source": source,
    "inputs": {k: np.asarray(v).tolist() for k, v in inputs.items()},
    "expected": np.asarray(expected, np.float64).tolist(),
    **{k: np.asarray(v, np.float64).tolist() for k, v in extra.items()},
  }


def main():
  rng = np.random.default_rng(SEED)
  cases = []

  for beta in (0.01, 0.1, 0.5, 2.0):
    for label_smoothing in (0.0, 0.1, 0.3):
      inputs = _reference_inputs(rng)
      args = [_t(inputs[k]) for k in inputs]
      losses, chosen_rewards, rejected_rewards = preference_loss(
        *args, beta=beta, label_smoothing=label_smoothing
      )
      trl_losses, _, _ = CPOTrainer.cpo_loss(
        _trl_self(
          beta=beta, loss_type="sigmoid", label_smoothing=label_smoothing
        ),
        *_margins(inputs),
      )
      np.testing.assert_allclose(trl_losses, losses, rtol=1e-12)
      cases.append(
        _case(
          "dpo",
          {"beta": beta, "label_smoothing": label_smoothing},
          inputs,
          losses,
          "eric-mitchell preference_loss (transcribed); TRL cpo_loss",
          chosen_rewards=chosen_rewards,
          rejected_rewards=rejected_rewards,
        )
      )

  for beta in (0.01, 0.1, 0.5, 2.0):
    inputs = _reference_inputs(rng)
    args = [_t(inputs[k]) for k in inputs]
    losses, _, _ = preference_loss(*args, beta=beta, ipo=True)
    trl_losses, _, _ = CPOTrainer.cpo_loss(
      _trl_self(beta=beta, loss_type="ipo"), *_margins(inputs)
    )
    np.testing.assert_allclose(trl_losses, losses, rtol=1e-12)
    cases.append(
      _case(
        "ipo",
        {"beta": beta},
        inputs,
        losses,
        "eric-mitchell preference_loss ipo=True (transcribed); TRL cpo_loss",
      )
    )

  for beta in (0.01, 0.1, 0.5, 2.0):
    inputs = _reference_inputs(rng)
    losses, _, _ = CPOTrainer.cpo_loss(
      _trl_self(beta=beta, loss_type="hinge"), *_margins(inputs)
    )
    cases.append(
      _case(
        "hinge", {"beta": beta}, inputs, losses, "TRL CPOTrainer.cpo_loss hinge"
      )
    )

  for beta, gamma in ((2.0, 0.5), (2.5, 1.0), (10.0, 3.0)):
    inputs = _length_inputs(rng)
    losses, _, _ = CPOTrainer.cpo_loss(
      _trl_self(beta=beta, loss_type="simpo", simpo_gamma=gamma),
      _t(inputs["policy_chosen_logps"]) / _t(inputs["chosen_lengths"]),
      _t(inputs["policy_rejected_logps"]) / _t(inputs["rejected_lengths"]),
    )
    cases.append(
      _case(
        "simpo",
        {"beta": beta, "gamma": gamma},
        inputs,
        losses,
        "TRL CPOTrainer.cpo_loss simpo",
      )
    )

  for beta in (0.1, 0.25, 1.0):
    inputs = _length_inputs(rng)
    chosen_avg = _t(inputs["policy_chosen_logps"]) / _t(
      inputs["chosen_lengths"]
    )
    rejected_avg = _t(inputs["policy_rejected_logps"]) / _t(
      inputs["rejected_lengths"]
    )
    odds_term = ORPOTrainer.odds_ratio_loss(
      _trl_self(beta=beta), chosen_avg, rejected_avg
    )[0]
    # TRL adds the token-averaged NLL of the chosen response and subtracts
    # the odds-ratio term; per example the NLL is -chosen_avg.
    losses = -chosen_avg - odds_term.double()
    cases.append(
      _case(
        "orpo",
        {"beta": beta},
        inputs,
        losses,
        "TRL ORPOTrainer.odds_ratio_loss (float32) + chosen NLL",
      )
    )

  OUTPUT.write_text(
    json.dumps(
      {
        "command": "python tests/golden/make_golden.py",
        "seed": SEED,
        "torch": torch.__version__,
        "trl": trl.__version__,
        "cases": cases,
      },
      indent=1,
    )
    + "\n"
  )
  print(f"wrote {len(cases)} cases to {OUTPUT}")


if __name__ == "__main__":
  main()
