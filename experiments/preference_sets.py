"""Small preference data sets over three named responses a, b and c.

* ``single_pair``: {(a, b)}, one winner and one loser;
* ``transitive``: {(a, b), (b, c), (a, c)}, the IPO paper's first bandit set
  (Azar et al., arXiv:2310.12036, section 5.1): a consistent order a > b > c
  observed without noise, where every action but a also loses;
* ``contradictory``: {(a, b), (b, a)}, the same pair observed both ways.

Each pair is one example of the full batch; duplicates would weight it.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np

from experiments.objectives import PairBatch
from experiments.sequence_space import Response
from experiments.sequence_space import SequenceSpace

NAMES = ("a", "b", "c")

DATASETS = {
  "single_pair": (("a", "b"),),
  "transitive": (("a", "b"), ("b", "c"), ("a", "c")),
  "contradictory": (("a", "b"), ("b", "a")),
}


@dataclasses.dataclass(frozen=True)
class PreferenceSet:
  """Preference pairs over named responses of one :class:`SequenceSpace`.

  Attributes:
    name: key of :data:`DATASETS`.
    space: the response space.
    responses: the responses called a, b and c.
    pairs: ``(winner, loser)`` names, one per example.
  """

  name: str
  space: SequenceSpace
  responses: dict[str, Response]
  pairs: tuple[tuple[str, str], ...]

  @property
  def named(self) -> tuple[str, ...]:
    """Names that occur in the pairs, in a-b-c order."""
    used = {name for pair in self.pairs for name in pair}
    return tuple(name for name in NAMES if name in used)

  def response_index(self, name: str) -> int:
    return self.space.index(self.responses[name])

  @property
  def observed_indices(self) -> np.ndarray:
    """Positions, in ``space.responses``, of the responses in some pair."""
    return np.array([self.response_index(name) for name in self.named])

  def batch(self) -> tuple[PairBatch, np.ndarray, np.ndarray]:
    """Labels and masks of every pair, and the table rows that score them.

    Returns:
      ``(batch, chosen_nodes, rejected_nodes)``: a :class:`PairBatch` of
      ``[num_pairs, T]`` arrays and the ``[num_pairs, T]`` rows of the logit
      table that give each response's teacher-forced logits.
    """
    columns = []
    for role in (0, 1):
      encoded = [
        self.space.encode(self.responses[pair[role]]) for pair in self.pairs
      ]
      columns.append([np.stack(part) for part in zip(*encoded)])
    (
      (chosen_labels, chosen_where, chosen_nodes),
      (rejected_labels, rejected_where, rejected_nodes),
    ) = columns
    batch = PairBatch(
      jnp.asarray(chosen_labels),
      jnp.asarray(chosen_where),
      jnp.asarray(rejected_labels),
      jnp.asarray(rejected_where),
    )
    return batch, chosen_nodes, rejected_nodes


def make(
  name: str, space: SequenceSpace, responses: dict[str, Response]
) -> PreferenceSet:
  """The data set ``name`` over the responses called a, b and c."""
  return PreferenceSet(name, space, dict(responses), DATASETS[name])


def stack(sets: list[PreferenceSet]):
  """Pads data sets of one space to a common number of pairs and stacks them.

  Stacking lets one compiled program train on every data set at once (under
  ``vmap``); padding pairs repeat the first pair and carry weight 0.

  Returns:
    ``(batch, chosen_nodes, rejected_nodes, weights)``: a :class:`PairBatch`
    of ``[sets, pairs, T]`` arrays, the matching ``[sets, pairs, T]`` table
    rows, and ``[sets, pairs]`` float weights (1 for a real pair).
  """
  if len({preference_set.space for preference_set in sets}) != 1:
    raise ValueError("stacked data sets must share one space")
  size = max(len(preference_set.pairs) for preference_set in sets)
  parts, weights = [], []
  for preference_set in sets:
    batch, chosen_nodes, rejected_nodes = preference_set.batch()
    count = len(preference_set.pairs)
    pad = np.zeros(size, dtype=np.int32)
    pad[:count] = np.arange(count)
    parts.append(
      [np.asarray(x)[pad] for x in (*batch, chosen_nodes, rejected_nodes)]
    )
    weights.append((np.arange(size) < count).astype(np.float64))
  columns = [np.stack(column) for column in zip(*parts)]
  batch = PairBatch(*(jnp.asarray(column) for column in columns[:4]))
  return batch, columns[4], columns[5], np.stack(weights)
