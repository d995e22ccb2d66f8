"""Tests of the IPO bandit datasets (slpo_jax.tasks.bandits)."""

import numpy as np
import pytest

from slpo_jax.tasks import bandits


def test_transitive_and_contradictory_sets():
  tok = bandits.bandit_tokenizer()
  assert tok.vocab_size == bandits.VOCAB_SIZE == 6
  chosen, rejected = bandits.bandit_pairs("transitive")
  as_text = lambda ids: [tok.decode([i]) for i in ids]
  assert list(zip(as_text(chosen), as_text(rejected))) == [
    ("a", "b"),
    ("b", "c"),
    ("a", "c"),
  ]
  chosen, rejected = bandits.bandit_pairs("contradictory")
  assert list(zip(as_text(chosen), as_text(rejected))) == [
    ("a", "b"),
    ("b", "a"),
  ]
  assert chosen.dtype == np.int32


def test_action_tokens():
  assert [bandits.action_token(i) for i in range(3)] == [3, 4, 5]
  with pytest.raises(ValueError):
    bandits.action_token(3)
  with pytest.raises(ValueError, match="unknown bandit dataset"):
    bandits.bandit_pairs("cyclic")
