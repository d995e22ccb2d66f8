"""Controlled preference tasks with known structure, as pure functions.

* ``slpo_jax.tasks.synthetic``: sentiment-controlled generation over a 64-word
  vocabulary with a ground-truth reward (a CPU-sized mirror of the DPO paper's
  IMDb experiment).
* ``slpo_jax.tasks.bandits``: the IPO paper's three-action bandit datasets.
* ``slpo_jax.tasks.vocab``: the integer vocabularies and their tokenizer.

No files or configs here; the training program builds batches from these in
``train/data/``.
"""

from slpo_jax.tasks import bandits
from slpo_jax.tasks import synthetic
from slpo_jax.tasks.vocab import WordTokenizer

__all__ = ["WordTokenizer", "bandits", "synthetic"]
