"""The three-action bandit preference datasets of the IPO paper.

Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from
Human Preferences", arXiv:2310.12036, section 5.1: a policy over three actions
{a, b, c} answering one empty prompt, trained on

* the transitive set {(a, b), (b, c), (a, c)} (each pair is (chosen,
  rejected)), where DPO drives the probabilities of b and c to zero while IPO
  keeps them bounded by the reference; and
* the contradictory set {(a, b), (b, a)}, whose ideal solution leaves the
  policy at the reference, which DPO leaves and IPO does not.

Each action is a one-token response to an empty prompt (the prompt is BOS
alone). The response has no EOS: with it, log pi(y) would include the
log-probability of EOS after the action, and the language-model policy would
no longer be the paper's tabular softmax over {a, b, c}.
"""

from __future__ import annotations

import numpy as np

from slpo_jax.tasks.vocab import NUM_SPECIAL
from slpo_jax.tasks.vocab import WordTokenizer

ACTIONS = ("a", "b", "c")
VOCAB_SIZE = NUM_SPECIAL + len(ACTIONS)

# (chosen, rejected) action indices.
TRANSITIVE_PAIRS = ((0, 1), (1, 2), (0, 2))
CONTRADICTORY_PAIRS = ((0, 1), (1, 0))
DATASETS = {
  "transitive": TRANSITIVE_PAIRS,
  "contradictory": CONTRADICTORY_PAIRS,
}


def bandit_tokenizer() -> WordTokenizer:
  """The tokenizer of the bandit vocabulary (``decode([3, 4])`` is 'a b')."""
  return WordTokenizer(ACTIONS)


def action_token(action: int) -> int:
  """The token id of action index ``action`` (0, 1, 2 for a, b, c)."""
  if not 0 <= action < len(ACTIONS):
    raise ValueError(
      f"action index must be in [0, {len(ACTIONS)}), got {action}"
    )
  return NUM_SPECIAL + action


def bandit_pairs(name: str) -> tuple[np.ndarray, np.ndarray]:
  """The token ids of a bandit dataset's pairs.

  Args:
    name: 'transitive' or 'contradictory'.

  Returns:
    ``(chosen, rejected)``, each ``[num_pairs]`` int32 action tokens.
  """
  if name not in DATASETS:
    raise ValueError(
      f"unknown bandit dataset {name!r}; one of {sorted(DATASETS)}"
    )
  pairs = np.asarray(DATASETS[name], np.int32) + NUM_SPECIAL
  return pairs[:, 0], pairs[:, 1]
