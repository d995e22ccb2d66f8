"""Tokenizers: one small protocol, three implementations.

* ``ByteTokenizer``: UTF-8 bytes plus BOS, EOS, PAD; needs no files.
* ``HFTokenizer``: a Hugging Face ``tokenizers`` tokenizer.json.
* ``SentencePieceTokenizer``: a SentencePiece .model file.

Contract of ``encode``: it returns the tokens of the text alone, never special
tokens. The pipeline adds BOS before the prompt and EOS after each response
itself, so a tokenizer whose post-processor would add BOS (most tokenizer.json
files of Llama-style models do) cannot produce a doubled BOS: its
post-processor is not run.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import Protocol
from typing import runtime_checkable

from train.data.report import DataError


@runtime_checkable
class Tokenizer(Protocol):
  """What the data pipeline and the metrics need from a tokenizer."""

  @property
  def bos_id(self) -> int: ...

  @property
  def eos_id(self) -> int: ...

  @property
  def pad_id(self) -> int: ...

  @property
  def vocab_size(self) -> int: ...

  def encode(self, text: str) -> list[int]:
    """Token ids of ``text``, without special tokens."""
    ...

  def decode(self, ids: Sequence[int]) -> str:
    """Text of ``ids``, special tokens dropped."""
    ...


class ByteTokenizer:
  """UTF-8 bytes as tokens 0-255, then BOS=256, EOS=257, PAD=258."""

  bos_id = 256
  eos_id = 257
  pad_id = 258
  vocab_size = 259

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def decode(self, ids: Sequence[int]) -> str:
    data = bytes(int(i) for i in ids if 0 <= int(i) < 256)
    return data.decode("utf-8", errors="replace")

  def token_text(self, token_id: int) -> str:
    names = {self.bos_id: "<bos>", self.eos_id: "<eos>", self.pad_id: "<pad>"}
    if token_id in names:
      return names[token_id]
    return bytes([token_id]).decode("utf-8", errors="backslashreplace")


# Spellings of the special tokens in common tokenizer.json files, tried in
# order when no tokenizer_config.json says which token is which.
_BOS_NAMES = (
  "<s>",
  "<bos>",
  "<|begin_of_text|>",
  "[BOS]",
  "<|startoftext|>",
  "<|im_start|>",
)
_EOS_NAMES = (
  "</s>",
  "<eos>",
  "<|end_of_text|>",
  "<|endoftext|>",
  "[EOS]",
  "<|im_end|>",
)
_PAD_NAMES = ("<pad>", "[PAD]", "<|pad|>", "<|finetune_right_pad_id|>")


def _config_token(config: dict, key: str) -> str | None:
  value = config.get(key)
  if isinstance(value, dict):  # {"content": "<s>", "lstrip": false, ...}
    value = value.get("content")
  return value if isinstance(value, str) else None


class _SpecialIds:
  """BOS, EOS and PAD ids held as ``_bos_id``, ``_eos_id``, ``_pad_id``."""

  _bos_id: int
  _eos_id: int
  _pad_id: int

  @property
  def bos_id(self) -> int:
    return self._bos_id

  @property
  def eos_id(self) -> int:
    return self._eos_id

  @property
  def pad_id(self) -> int:
    return self._pad_id


class HFTokenizer(_SpecialIds):
  """A Hugging Face ``tokenizers`` tokenizer.json.

  The special tokens come from arguments, else from a tokenizer_config.json
  next to the file (as saved by ``transformers``), else from common spellings.
  Without a BOS token, EOS is used as BOS (the GPT-2 convention); without a
  PAD token, EOS pads (padding is masked out everywhere, so its id is
  immaterial). A tokenizer without an EOS token is rejected: responses must
  end with one.
  """

  def __init__(
    self,
    path: str,
    *,
    bos_token: str | None = None,
    eos_token: str | None = None,
    pad_token: str | None = None,
  ):
    import tokenizers

    try:
      self._tokenizer = tokenizers.Tokenizer.from_file(str(path))
    except Exception as e:  # The Rust errors have no common Python type.
      raise DataError(f"{path}: cannot load tokenizer.json: {e}") from None
    config = {}
    config_path = pathlib.Path(path).with_name("tokenizer_config.json")
    if config_path.exists():
      config = json.loads(config_path.read_text())
    self._path = str(path)
    eos = self._find(
      "eos", eos_token or _config_token(config, "eos_token"), _EOS_NAMES
    )
    if eos is None:
      raise DataError(f"{path}: no EOS token found; pass eos_token")
    bos = self._find(
      "bos", bos_token or _config_token(config, "bos_token"), _BOS_NAMES
    )
    pad = self._find(
      "pad", pad_token or _config_token(config, "pad_token"), _PAD_NAMES
    )
    self._eos_id = eos
    self._bos_id = eos if bos is None else bos
    self._pad_id = eos if pad is None else pad

  def _find(
    self, role: str, given: str | None, names: Sequence[str]
  ) -> int | None:
    if given is not None:
      token_id = self._tokenizer.token_to_id(given)
      if token_id is None:
        raise DataError(f"{self._path}: {role} token {given!r} not in vocab")
      return token_id
    for name in names:
      token_id = self._tokenizer.token_to_id(name)
      if token_id is not None:
        return token_id
    return None

  @property
  def path(self) -> str:
    """The tokenizer.json file."""
    return self._path

  @property
  def vocab_size(self) -> int:
    return self._tokenizer.get_vocab_size(with_added_tokens=True)

  def token_text(self, token_id: int) -> str:
    """One token's text, special tokens included (for showing boundaries)."""
    return self._tokenizer.decode([int(token_id)], skip_special_tokens=False)

  def encode(self, text: str) -> list[int]:
    # add_special_tokens=False skips the post-processor (and its BOS).
    return self._tokenizer.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """``encode`` of many texts at once, in parallel in Rust."""
    encodings = self._tokenizer.encode_batch(
      list(texts), add_special_tokens=False
    )
    return [e.ids for e in encodings]

  def decode(self, ids: Sequence[int]) -> str:
    return self._tokenizer.decode(
      [int(i) for i in ids], skip_special_tokens=True
    )


class SentencePieceTokenizer(_SpecialIds):
  """A SentencePiece model. Without a BOS or PAD piece, EOS stands in."""

  def __init__(self, path: str):
    import sentencepiece

    try:
      self._model = sentencepiece.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as e:
      raise DataError(f"{path}: cannot load SentencePiece model: {e}") from None
    self._path = str(path)
    if self._model.eos_id() < 0:
      raise DataError(f"{path}: the SentencePiece model has no EOS piece")
    self._eos_id = self._model.eos_id()
    self._bos_id = (
      self._model.bos_id() if self._model.bos_id() >= 0 else (self._eos_id)
    )
    self._pad_id = (
      self._model.pad_id() if self._model.pad_id() >= 0 else (self._eos_id)
    )

  @property
  def path(self) -> str:
    """The .model file."""
    return self._path

  @property
  def vocab_size(self) -> int:
    return self._model.get_piece_size()

  def token_text(self, token_id: int) -> str:
    return self._model.id_to_piece(int(token_id)).replace("\u2581", " ")

  def encode(self, text: str) -> list[int]:
    # add_bos/add_eos default to False: no special tokens.
    return self._model.encode(text, out_type=int)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return self._model.encode(list(texts), out_type=int)

  def decode(self, ids: Sequence[int]) -> str:
    return self._model.decode([int(i) for i in ids])


def load_tokenizer(spec: str) -> Tokenizer:
  """Loads a tokenizer from ``data.tokenizer``.

  Args:
    spec: 'bytes', a path to a tokenizer.json (any name ending in .json), a
      path to a SentencePiece model (ending in .model), or a directory (a
      model checkpoint) holding tokenizer.json or tokenizer.model.

  Raises:
    DataError: unknown spec, missing or unreadable file.
  """
  if spec == "bytes":
    return ByteTokenizer()
  if pathlib.Path(spec).is_dir():
    for name in ("tokenizer.json", "tokenizer.model"):
      if (pathlib.Path(spec) / name).exists():
        return load_tokenizer(str(pathlib.Path(spec) / name))
    raise DataError(
      f"{spec}: no tokenizer.json or tokenizer.model in the directory"
    )
  if spec.endswith(".json") or spec.endswith(".model"):
    if not pathlib.Path(spec).exists():
      raise DataError(f"{spec}: tokenizer file not found")
    if spec.endswith(".json"):
      return HFTokenizer(spec)
    return SentencePieceTokenizer(spec)
  raise DataError(
    f"data config: tokenizer must be 'bytes', a tokenizer.json path or a "
    f".model path, got {spec!r}"
  )


# A fitted BPE's special tokens, as ids 0, 1, 2.
BPE_SPECIAL = ("<pad>", "<s>", "</s>")


def fit_byte_bpe(texts: Sequence[str], vocab_size: int, folder: pathlib.Path):
  """Fits a byte-level BPE of ``vocab_size`` ids to ``texts`` and saves it
  in ``folder`` as ``load_tokenizer`` reads it (``tokenizer.json`` and the
  pad, BOS and EOS names of ``BPE_SPECIAL``). For benchmarks and
  experiments on local text: nothing is downloaded."""
  import tokenizers
  from tokenizers import decoders
  from tokenizers import pre_tokenizers
  from tokenizers import trainers

  tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  tokenizer.train_from_iterator(
    texts,
    trainers.BpeTrainer(
      vocab_size=vocab_size,
      special_tokens=list(BPE_SPECIAL),
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False,
    ),
  )
  folder.mkdir(parents=True, exist_ok=True)
  tokenizer.save(str(folder / "tokenizer.json"))
  names = dict(zip(("pad_token", "bos_token", "eos_token"), BPE_SPECIAL))
  (folder / "tokenizer_config.json").write_text(json.dumps(names))
