"""Writes tests/golden/trl_bco_running.json from TRL 0.28's running BCO.

TRL 1.x's ``bco_pair`` has no reward shift (``make_trl_golden.py`` covers
it); TRL up to 0.28 shifted it by a running mean of the rewards, kept in a
``RunningMoments`` object on the trainer. That form is the table's
``bco_pair_running``. Run from the repository root, with TRL 0.28 installed
into a folder of its own beside the TRL 1.16 virtualenv of
``make_trl_golden.py`` (whose PyTorch it uses)::

  /tmp/trlenv/bin/pip install --no-deps --target /tmp/trl028 trl==0.28.0
  PYTHONPATH=/tmp/trl028 /tmp/trlenv/bin/python tests/golden/make_trl_bco_golden.py

The committed file was generated with trl 0.28.0 and torch 2.13.0+cpu.

What runs is TRL's real code: ``DPOTrainer.dpo_loss(..., loss_type=
"bco_pair")`` on a trainer made with ``object.__new__(DPOTrainer)`` (so
``__init__`` never runs) holding the attributes the method reads, and a real
``trl.trainer.utils.RunningMoments`` that persists across the batches of a
sequence, as it persists across the steps of a TRL run. Each sequence is
four batches; recorded per batch: the inputs (sequence log-probs, float32
numbers in float64), TRL's per-example losses, the gradient of their mean
with respect to the policy's log-probs, and the running mean after the
batch. Everything is float64 except what TRL itself rounds: its
``RunningMoments`` keeps the batch mean in float32.
"""

import json
import pathlib

import numpy as np

OUTPUT = pathlib.Path(__file__).with_name("trl_bco_running.json")
TRL_VERSION = "0.28.0"
SEED = 20260602
BATCH = 5
BATCHES = 4


def _import_trl():
  """TRL 0.28 under a newer transformers, whose ``_is_package_available``
  now returns a tuple that TRL 0.28 reads as a bool."""
  import trl.import_utils as trl_import_utils

  original = trl_import_utils._is_package_available

  def available(name, return_version=False):
    found = original(name, return_version)
    if isinstance(found, tuple) and not return_version:
      return found[0]
    return found

  trl_import_utils._is_package_available = available
  import trl
  from trl.trainer import dpo_trainer
  from trl.trainer import utils

  return trl, dpo_trainer.DPOTrainer, utils.RunningMoments


class _Accelerator:
  """What ``dpo_loss`` and ``RunningMoments`` use: one process, on CPU."""

  use_distributed = False

  def __init__(self, device):
    self.device = device


def _f32(x):
  return np.asarray(x, np.float32).astype(np.float64)


def _batch(rng, scale):
  """Sequence log-probs; policies within ``scale`` nats of the references."""
  reference = _f32(rng.uniform(-40.0, -2.0, (2, BATCH)))
  policy = _f32(reference + rng.uniform(-scale, scale, (2, BATCH)))
  return {
    "policy_chosen_logps": policy[0].tolist(),
    "policy_rejected_logps": policy[1].tolist(),
    "reference_chosen_logps": reference[0].tolist(),
    "reference_rejected_logps": reference[1].tolist(),
  }


def _sequence(trainer_class, moments_class, rng, beta, scale):
  import torch
  from trl.trainer.dpo_config import FDivergenceType

  trainer = object.__new__(trainer_class)
  accelerator = _Accelerator(torch.device("cpu"))
  for key, value in {
    "accelerator": accelerator,
    "beta": beta,
    "label_smoothing": 0.0,
    "reference_free": False,
    "f_divergence_type": FDivergenceType.REVERSE_KL,
    "f_divergence_params": {},
    "running": moments_class(accelerator),
  }.items():
    setattr(trainer, key, value)
  batches = []
  for _ in range(BATCHES):
    inputs = _batch(rng, scale)
    tensors = {
      k: torch.tensor(v, dtype=torch.float64) for k, v in inputs.items()
    }
    chosen = tensors["policy_chosen_logps"].requires_grad_(True)
    rejected = tensors["policy_rejected_logps"].requires_grad_(True)
    losses, _, _ = trainer.dpo_loss(
      chosen,
      rejected,
      tensors["reference_chosen_logps"],
      tensors["reference_rejected_logps"],
      loss_type="bco_pair",
    )
    losses.mean().backward()
    batches.append(
      {
        **inputs,
        "losses": losses.detach().numpy().tolist(),
        "grad_policy_chosen_logps": chosen.grad.numpy().tolist(),
        "grad_policy_rejected_logps": rejected.grad.numpy().tolist(),
        "running_mean": float(trainer.running.mean),
      }
    )
  return {"beta": beta, "scale": scale, "batches": batches}


def main():
  import torch

  trl, trainer_class, moments_class = _import_trl()
  if trl.__version__ != TRL_VERSION:
    raise SystemExit(f"needs trl=={TRL_VERSION}, found {trl.__version__}")
  torch.set_default_dtype(torch.float64)
  rng = np.random.default_rng(SEED)
  # Small and large log-ratios (the last saturates the sigmoids), two betas.
  sequences = [
    _sequence(trainer_class, moments_class, rng, beta, scale)
    for beta, scale in ((0.1, 3.0), (0.5, 3.0), (0.1, 300.0))
  ]
  OUTPUT.write_text(
    json.dumps(
      {
        "trl_version": trl.__version__,
        "torch_version": torch.__version__,
        "generated_by": "tests/golden/make_trl_bco_golden.py",
        "sequences": sequences,
      },
      indent=1,
    )
    + "\n"
  )
  print(f"wrote {OUTPUT}")


if __name__ == "__main__":
  main()
