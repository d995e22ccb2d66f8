"""The references of sections 5.6 and 5.10: model, tokenizer, fit, scoring.

A reference is named by its ``Reference`` setting. ``byte0.45m`` is section
5.6's (the byte tokenizer, 0.45M parameters); ``bpe4m`` is section 5.10's (a
byte-level BPE of 2,048 ids fitted to the reference part's chosen
transcripts, so sequences are about a third as long, and a 4.0M-parameter
model at the same cost per pair). Both are fitted by the program's SFT fit to
the same chosen transcripts; ``held_out_texts`` and ``nats_per_byte`` measure
them on the same held-out text whatever their tokenizer.
"""

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from slpo_jax import models
from train.data import sources
from train.data import tokenization

# The held-out text both references are scored on: the end of the prompt
# and the start of the chosen response, cut in bytes so it is the same
# text for every tokenizer and fits either reference's length.
SCORED_PROMPT_BYTES = 120
SCORED_RESPONSE_BYTES = 192


@dataclasses.dataclass(frozen=True)
class Reference:
  """A reference: its tokenizer, its size, its lengths and its fit."""

  tokenizer: str  # "bytes" or "bpe" (fitted in the workdir).
  vocab_size: int
  d_model: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  mlp_dim: int
  max_length: int  # Tokens of prompt plus response.
  max_prompt_length: int
  sft_steps: int
  sft_batch: int = 16
  sft_rate: float = 3e-3


REFERENCES = {
  "byte0.45m": Reference("bytes", 259, 128, 2, 4, 2, 352, 320, 128, 400),
  "bpe4m": Reference("bpe", 2048, 256, 4, 8, 4, 704, 160, 64, 400),
}


def model_config(reference: Reference) -> models.DecoderConfig:
  return models.get_config(
    "llama",
    "tiny",
    vocab_size=reference.vocab_size,
    d_model=reference.d_model,
    num_layers=reference.num_layers,
    num_heads=reference.num_heads,
    num_kv_heads=reference.num_kv_heads,
    head_dim=32,
    mlp_dim=reference.mlp_dim,
    max_len=reference.max_length,
  )


def tokenizer_spec(reference: Reference, workdir: pathlib.Path) -> str:
  """What ``--config.data.tokenizer`` is given."""
  if reference.tokenizer == "bytes":
    return "bytes"
  return str(workdir / "tokenizer" / "tokenizer.json")


def make_tokenizer(
  reference: Reference, workdir: pathlib.Path, chosen: list[str] = ()
):
  """The reference's tokenizer; a BPE is fitted to ``chosen`` once."""
  spec = tokenizer_spec(reference, workdir)
  if spec != "bytes" and not pathlib.Path(spec).exists():
    tokenization.fit_byte_bpe(
      list(chosen), reference.vocab_size, pathlib.Path(spec).parent
    )
  tokenizer = tokenization.load_tokenizer(spec)
  if tokenizer.vocab_size != reference.vocab_size:
    raise ValueError(f"{spec}: {tokenizer.vocab_size} ids, not the setting's")
  return tokenizer


def sft_rows(transcripts: list[str], tokenizer, max_length: int) -> list:
  """BOS + the last tokens of each transcript + EOS, at most ``max_length``."""
  return [
    [
      tokenizer.bos_id,
      *tokenizer.encode(text)[-(max_length - 2) :],
      tokenizer.eos_id,
    ]
    for text in transcripts
  ]


def sft_batches(
  rows: list, pad_id: int, max_length: int, batch: int, seed: int
):
  """``rows`` in seeded epochs, as the SFT fit reads them."""
  rng = np.random.default_rng(seed)
  while True:
    order = rng.permutation(len(rows))
    for start in range(0, len(order) - batch + 1, batch):
      ids = np.full((batch, max_length), pad_id, np.int32)
      mask = np.zeros((batch, max_length), bool)
      for row, index in enumerate(order[start : start + batch]):
        tokens = rows[index]
        ids[row, : len(tokens)] = tokens
        mask[row, : len(tokens)] = True
      labels = np.concatenate(
        [ids[:, 1:], np.full((batch, 1), pad_id, np.int32)], 1
      )
      loss_mask = mask & np.concatenate(
        [mask[:, 1:], np.zeros((batch, 1), bool)], 1
      )
      yield dict(
        input_ids=ids, attention_mask=mask, labels=labels, loss_mask=loss_mask
      )


def continuation_logps(
  model, params, rows, *, max_length: int, pad_id: int, batch: int = 32
) -> np.ndarray:
  """log pi(continuation | context) for each ``(context, continuation)``."""

  @jax.jit
  def logps(ids, mask, counted):
    logits = model.apply(params, ids, mask)[:, :-1]
    token = jnp.take_along_axis(
      jax.nn.log_softmax(logits.astype(jnp.float32)), ids[:, 1:, None], -1
    )[..., 0]
    return jnp.sum(token * counted[:, 1:], axis=-1)

  out = []
  for start in range(0, len(rows), batch):
    chunk = rows[start : start + batch]
    ids = np.full((batch, max_length), pad_id, np.int32)
    mask = np.zeros((batch, max_length), bool)
    counted = np.zeros((batch, max_length), np.float32)
    for i, (context, continuation) in enumerate(chunk):
      tokens = list(context) + list(continuation)
      ids[i, : len(tokens)] = tokens
      mask[i, : len(tokens)] = True
      counted[i, len(context) : len(tokens)] = 1.0
    out.append(np.asarray(logps(ids, mask, counted))[: len(chunk)])
  return np.concatenate(out).astype(np.float64)


def response_logps(
  model, params, pairs, *, max_length: int, pad_id: int, batch: int = 32
) -> np.ndarray:
  """``[pairs, 2]`` log pi(y_w), log pi(y_l): each response given its prompt."""
  rows = [
    (pair.prompt, response)
    for pair in pairs
    for response in (pair.chosen, pair.rejected)
  ]
  return continuation_logps(
    model, params, rows, max_length=max_length, pad_id=pad_id, batch=batch
  ).reshape(-1, 2)


def _cut(text: str, count: int, keep_end: bool) -> str:
  data = text.encode("utf-8")
  data = data[-count:] if keep_end else data[:count]
  # A cut through a character drops its remaining bytes.
  return data.decode("utf-8", errors="ignore")


def held_out_texts(records: list[dict]) -> list[tuple[str, str]]:
  """(end of the prompt, start of the chosen response) of each record."""
  texts = []
  for record in records:
    try:
      prompt, chosen, _ = sources.split_hh_transcripts(
        record["chosen"], record["rejected"]
      )
    except Exception:  # noqa: BLE001 - the same records the program skips.
      continue
    response = _cut(chosen, SCORED_RESPONSE_BYTES, keep_end=False)
    if response:
      texts.append((_cut(prompt, SCORED_PROMPT_BYTES, keep_end=True), response))
  return texts


def nats_per_byte(model, params, tokenizer, texts, *, max_length: int) -> float:
  """Total nats of the responses' tokens given BOS + prompt, per UTF-8 byte.

  No EOS is scored (the responses are cut), so the number is the same
  quantity for any tokenizer that spells the text.
  """
  rows = []
  for prompt, response in texts:
    continuation = tokenizer.encode(response)
    room = max_length - 1 - len(continuation)
    if room < 1:
      raise ValueError(f"{len(continuation)} tokens do not fit {max_length}")
    context = [tokenizer.bos_id, *tokenizer.encode(prompt)[-room:]]
    rows.append((context, continuation))
  logps = continuation_logps(
    model, params, rows, max_length=max_length, pad_id=tokenizer.pad_id
  )
  return float(-logps.sum() / sum(len(r.encode("utf-8")) for _, r in texts))
