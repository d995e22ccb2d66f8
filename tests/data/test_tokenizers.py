"""Tokenizers: bytes, a tokenizer.json and a SentencePiece model, built here."""

import io
import json

import numpy as np
import pytest
import sentencepiece
import tokenizers
from tokenizers import decoders
from tokenizers import models
from tokenizers import pre_tokenizers
from tokenizers import processors
from tokenizers import trainers

from train import data


def _corpus():
  words = (
    "the cat sat on a mat while dogs ran far away and birds sang "
    "songs of joy question answer yes no maybe it is plus what"
  ).split()
  rng = np.random.default_rng(0)
  return [" ".join(rng.choice(words, size=8)) + f" {i}." for i in range(400)]


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory):
  """A byte-level BPE tokenizer.json whose post-processor adds BOS."""
  tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=400,
    special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  tok.train_from_iterator(_corpus(), trainer)
  tok.post_processor = processors.TemplateProcessing(
    single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
  )
  path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
  tok.save(str(path))
  return path


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory):
  """A unigram SentencePiece model with ~100 pieces, no PAD piece."""
  model = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
    sentence_iterator=iter(_corpus()),
    model_writer=model,
    vocab_size=100,
    model_type="unigram",
    hard_vocab_limit=False,
    minloglevel=2,
  )
  path = tmp_path_factory.mktemp("spm") / "tokenizer.model"
  path.write_bytes(model.getvalue())
  return path


def test_byte_tokenizer():
  tok = data.ByteTokenizer()
  assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (
    256,
    257,
    258,
    259,
  )
  text = "héllo ✓"
  ids = tok.encode(text)
  assert len(ids) == len(text.encode("utf-8"))
  assert tok.decode([tok.bos_id, *ids, tok.eos_id, tok.pad_id]) == text
  assert isinstance(tok, data.Tokenizer)


def test_hf_tokenizer(tokenizer_json):
  raw = tokenizers.Tokenizer.from_file(str(tokenizer_json))
  tok = data.load_tokenizer(str(tokenizer_json))
  assert isinstance(tok, data.HFTokenizer) and isinstance(tok, data.Tokenizer)
  assert tok.bos_id == raw.token_to_id("<s>")
  assert tok.eos_id == raw.token_to_id("</s>")
  assert tok.pad_id == raw.token_to_id("<pad>")
  text = "the cat sat on a mat"
  # The file's own post-processor adds BOS; ``encode`` must not.
  assert raw.encode(text).ids[0] == tok.bos_id
  assert tok.encode(text) == raw.encode(text, add_special_tokens=False).ids
  assert tok.bos_id not in tok.encode(text)
  assert tok.decode([tok.bos_id, *tok.encode(text), tok.eos_id]) == text
  assert tok.encode_batch([text, "dogs"]) == [
    tok.encode(text),
    tok.encode("dogs"),
  ]
  # A directory (a model checkpoint) finds its tokenizer.json.
  assert data.load_tokenizer(str(tokenizer_json.parent)).eos_id == tok.eos_id


def test_hf_tokenizer_config_names_the_special_tokens(tokenizer_json, tmp_path):
  path = tmp_path / "tokenizer.json"
  path.write_bytes(tokenizer_json.read_bytes())
  (tmp_path / "tokenizer_config.json").write_text(
    json.dumps(
      {
        "bos_token": {"content": "</s>"},
        "eos_token": "<pad>",
        "pad_token": None,
      }
    )
  )
  tok = data.HFTokenizer(str(path))
  raw = tokenizers.Tokenizer.from_file(str(path))
  assert tok.bos_id == raw.token_to_id("</s>")
  assert tok.eos_id == raw.token_to_id("<pad>")
  assert tok.pad_id == raw.token_to_id("<pad>")  # Found by name.
  with pytest.raises(data.DataError, match="not in vocab"):
    data.HFTokenizer(str(path), eos_token="<nope>")


def test_hf_tokenizer_without_eos_is_rejected(tmp_path):
  tok = tokenizers.Tokenizer(
    models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>")
  )
  tok.save(str(tmp_path / "tokenizer.json"))
  with pytest.raises(data.DataError, match="no EOS token"):
    data.load_tokenizer(str(tmp_path / "tokenizer.json"))


def test_sentencepiece_tokenizer(sentencepiece_model):
  tok = data.load_tokenizer(str(sentencepiece_model))
  assert isinstance(tok, data.SentencePieceTokenizer)
  assert (tok.bos_id, tok.eos_id) == (1, 2)
  assert tok.pad_id == tok.eos_id  # The model has no PAD piece.
  assert 90 <= tok.vocab_size <= 110
  text = "the cat sat on a mat"
  ids = tok.encode(text)
  assert tok.bos_id not in ids and tok.eos_id not in ids
  assert tok.decode([tok.bos_id, *ids, tok.eos_id]) == text


def test_tokenizer_specs_that_fail(tmp_path):
  with pytest.raises(data.DataError, match="tokenizer must be"):
    data.load_tokenizer("gpt2")
  with pytest.raises(data.DataError, match="tokenizer file not found"):
    data.load_tokenizer(str(tmp_path / "missing.json"))
  (tmp_path / "broken.model").write_bytes(b"not a model")
  with pytest.raises(data.DataError, match="cannot load SentencePiece"):
    data.load_tokenizer(str(tmp_path / "broken.model"))
  with pytest.raises(data.DataError, match="no tokenizer.json"):
    data.load_tokenizer(str(tmp_path))


@pytest.mark.parametrize("kind", ["bytes", "json", "sentencepiece"])
def test_exactly_one_bos_and_eos_ending_responses(
  kind, jsonl_config, tokenizer_json, sentencepiece_model
):
  spec = {
    "bytes": "bytes",
    "json": str(tokenizer_json),
    "sentencepiece": str(sentencepiece_model),
  }[kind]
  jsonl_config.tokenizer = spec
  tok = data.make_tokenizer(jsonl_config)
  batches = data.make_pipeline(
    jsonl_config,
    tokenizer=tok,
    batch_size=8,
    seed=0,
    shard_index=0,
    shard_count=1,
    split="train",
  )
  for _ in range(5):
    batch = next(batches)
    for side in ("chosen", "rejected"):
      ids = getattr(batch, f"{side}_input_ids")
      real = getattr(batch, f"{side}_attention_mask").astype(bool)
      assert np.all(ids[:, 0] == tok.bos_id)
      if tok.bos_id != tok.pad_id:
        assert np.all(((ids == tok.bos_id) & real).sum(axis=1) == 1)
      last = real.sum(axis=1) - 1
      assert np.all(ids[np.arange(len(ids)), last] == tok.eos_id)
      # The last response label is EOS and is in the loss.
      labels, loss = (
        getattr(batch, f"{side}_labels"),
        getattr(batch, f"{side}_loss_mask"),
      )
      assert np.all(labels[np.arange(len(ids)), last - 1] == tok.eos_id)
      assert np.all(loss[np.arange(len(ids)), last - 1])


def test_encode_adding_bos_does_not_double_it(jsonl_config):

  class AddsBos(data.ByteTokenizer):
    def encode(self, text):
      return [self.bos_id] + super().encode(text)

  dataset = data.load_dataset(jsonl_config, tokenizer=AddsBos(), split="train")
  for pair in dataset.pairs:
    assert pair.prompt[0] == 256 and pair.prompt[1] != 256


def test_empty_tokenizer_means_the_model_checkpoint(
  jsonl_config, tokenizer_json
):
  jsonl_config.tokenizer = ""
  tok = data.make_tokenizer(jsonl_config, str(tokenizer_json.parent))
  assert isinstance(tok, data.HFTokenizer)
  with pytest.raises(data.DataError, match="no model checkpoint"):
    data.make_tokenizer(jsonl_config, "")


def test_a_fitted_byte_bpe_loads_as_the_program_reads_it(tmp_path):
  from train.data import tokenization

  tokenization.fit_byte_bpe(_corpus(), 300, tmp_path / "bpe")
  tok = data.load_tokenizer(str(tmp_path / "bpe"))
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  assert tok.vocab_size == 300
  text = "the cat sat on a mat, and ünïcode too."
  ids = tok.encode(text)
  assert tok.decode(ids) == text
  # Fitted merges: the corpus takes fewer tokens than bytes.
  corpus = _corpus()
  tokens = sum(len(tok.encode(t)) for t in corpus)
  assert tokens < 0.7 * sum(len(t.encode()) for t in corpus)
