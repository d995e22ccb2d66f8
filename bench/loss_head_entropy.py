"""What the entropy metric costs each loss head: with and without, side by side.

Command (from the repository root)::

  python -m bench.loss_head --entropy                 # V = 8,192 and 32,768
  python -m bench.loss_head --entropy --json out.json

The four timed functions are the jitted forward plus backward of
``sum(logp) + sum(not_logp)`` (as in :mod:`bench.loss_head`), by the plain
head and the fused one, each once as it is and once also returning the
per-step entropy and ``log sum_v p_v^2`` (``distribution_stats=True``:
TRL's ``entropy`` metric and WPO's alignment term; the fused head sums them
in its pass over the vocabulary tiles). Runs are interleaved; each ratio is
the ratio of medians, and memory is XLA's temporary-buffer accounting.
"""

import json
import os

import jax
import jax.numpy as jnp

from bench import loss_head
from slpo_jax import fused
from slpo_jax import logprobs


def _fused(distribution):
  def loss(hidden, lm_head, labels):
    tokens = fused.token_logps_from_hidden(
      hidden, lm_head, labels, distribution_stats=distribution
    )
    return _total(tokens)

  return loss


def _plain(distribution):
  def loss(hidden, lm_head, labels):
    logits = jnp.dot(hidden, lm_head)
    tokens = logprobs.token_logps(logits, labels)
    if distribution:
      entropy, log_sum_sq = logprobs.distribution_stats(logits)
      tokens = tokens._replace(entropy=entropy, log_sum_sq_probs=log_sum_sq)
    return _total(tokens)

  return loss


def _total(tokens):
  logp, not_logp = logprobs.sequence_logps_from_token_logps(
    tokens.logp, tokens.not_logp
  )
  total = jnp.sum(logp) + jnp.sum(not_logp)
  if tokens.entropy is not None:
    # Kept in the output, so that XLA cannot drop them; no gradient.
    total = total + jnp.sum(tokens.entropy + tokens.log_sum_sq_probs)
  return total


def measure(vocab, args):
  """One row per head at one V: seconds and memory, without and with."""
  length = args.tokens // args.batch
  inputs = loss_head.make_inputs(
    args.batch, length, args.hidden_size, vocab, jnp.float32
  )
  steps = {}
  for head, make in (("plain", _plain), ("fused", _fused)):
    for distribution in (False, True):
      name = f"{head}{'+entropy' if distribution else ''}"
      steps[name] = loss_head.compile_step(make(distribution), inputs)
  wall, cpu, _ = loss_head.interleaved_medians(
    steps, inputs, args.repeats, args.warmup
  )
  rows = []
  for head in ("plain", "fused"):
    without, with_ = steps[head], steps[f"{head}+entropy"]
    rows.append(
      {
        "head": head,
        "vocab": vocab,
        "tokens": args.batch * length,
        "hidden_size": args.hidden_size,
        "seconds": wall[head],
        "entropy_seconds": wall[f"{head}+entropy"],
        "time_ratio": wall[f"{head}+entropy"] / wall[head],
        "cpu_time_ratio": cpu[f"{head}+entropy"] / cpu[head],
        "temp_bytes": loss_head.temp_bytes(without),
        "entropy_temp_bytes": loss_head.temp_bytes(with_),
      }
    )
  return rows


def format_table(machine, rows) -> str:
  lines = [
    f"Entropy metric, on {machine['cpu_model']} ({machine['platform']}),"
    f" {rows[0]['tokens']} tokens, d = {rows[0]['hidden_size']}, float32",
    "",
    "| head | V | without (s) | with entropy (s) | time ratio |"
    " temp MiB without | temp MiB with |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
  ]
  for r in rows:
    lines.append(
      f"| {r['head']} | {r['vocab']:,} | {r['seconds']:.3f} |"
      f" {r['entropy_seconds']:.3f} | {r['time_ratio']:.2f} |"
      f" {loss_head.mib(r['temp_bytes'])} |"
      f" {loss_head.mib(r['entropy_temp_bytes'])} |"
    )
  return "\n".join(lines)


def run(args) -> None:
  machine = loss_head.machine_description()
  vocabs = args.vocab if args.vocab_given else [8192, 32768]
  rows = [row for vocab in vocabs for row in measure(vocab, args)]
  machine["load_average_at_end"] = os.getloadavg()[0]
  print(format_table(machine, rows))
  if args.json:
    args.json.write_text(
      json.dumps(
        {
          "machine": machine,
          "command": "python -m bench.loss_head --entropy",
          "backend": jax.default_backend(),
          "rows": rows,
        },
        indent=2,
      )
      + "\n"
    )
    print(f"\nSaved {args.json}")
