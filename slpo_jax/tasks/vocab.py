"""Small integer vocabularies for the controlled tasks, with a text view.

The synthetic sentiment task and the bandit datasets work on their own integer
vocabularies, not on text. ``WordTokenizer`` gives such a vocabulary the same
small interface as the text tokenizers of the training program (``encode``,
``decode``, ``bos_id``, ``eos_id``, ``pad_id``, ``vocab_size``), so batches,
metrics and generated samples are handled the same way whatever the task.
"""

from __future__ import annotations

from collections.abc import Sequence

# The special ids are the same in every task vocabulary: padding first so that
# a zero-initialised array is all padding, then the sequence delimiters.
PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
NUM_SPECIAL = 3
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")


class WordTokenizer:
  """A whitespace tokenizer over a fixed word list.

  Token ids are ``0, 1, 2`` for ``<pad>``, ``<bos>``, ``<eos>``, then the
  words in the order given. ``encode`` never adds special tokens (the data
  pipeline adds BOS and EOS itself); ``decode`` drops them.

  Example::

    tok = WordTokenizer(("a", "b", "c"))
    tok.encode("b c")        # [4, 5]
    tok.decode([1, 4, 5, 2])  # 'b c'
  """

  def __init__(self, words: Sequence[str]):
    words = tuple(words)
    if len(set(words)) != len(words):
      raise ValueError("word list has duplicates")
    for word in words:
      if not word or any(ch.isspace() for ch in word):
        raise ValueError(f"word {word!r} is empty or contains whitespace")
      if word in SPECIAL_TOKENS:
        raise ValueError(f"word {word!r} collides with a special token")
    self._words = words
    self._pieces = SPECIAL_TOKENS + words
    self._ids = {piece: i for i, piece in enumerate(self._pieces)}

  @property
  def words(self) -> tuple[str, ...]:
    """The word list, in id order (word ``i`` has id ``NUM_SPECIAL + i``)."""
    return self._words

  @property
  def bos_id(self) -> int:
    return BOS_ID

  @property
  def eos_id(self) -> int:
    return EOS_ID

  @property
  def pad_id(self) -> int:
    return PAD_ID

  @property
  def vocab_size(self) -> int:
    return len(self._pieces)

  def encode(self, text: str) -> list[int]:
    """Maps whitespace-separated words (or special tokens) to ids."""
    ids = []
    for piece in text.split():
      if piece not in self._ids:
        raise ValueError(f"unknown word {piece!r}")
      ids.append(self._ids[piece])
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    """Maps ids to words joined by spaces, dropping the special tokens."""
    return " ".join(self._pieces[int(i)] for i in ids if int(i) >= NUM_SPECIAL)

  def id_to_piece(self, token_id: int) -> str:
    """The word or special token with this id (specials included)."""
    return self._pieces[int(token_id)]
