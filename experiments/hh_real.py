"""Section 5.6: the loser's share s and three losses on real HH-RLHF pairs.

  python -m experiments.hh_real prepare --hh FILE --workdir /tmp/hh56
  python -m experiments.hh_real runs --workdir /tmp/hh56 --seeds 3
  python -m experiments.hh_real report --workdir /tmp/hh56 [--out docs/figures]

``prepare`` splits the HH file into a reference part, held-out pairs and
training pairs (by content hash, so the split does not depend on file order),
writes the two pair files the program reads, fits the byte-level reference to
the reference part's chosen transcripts with the program's SFT fit, and
measures the share s = pi_ref(y_l) / (pi_ref(y_w) + pi_ref(y_l)) on the
training pairs. ``runs`` trains each loss for one epoch with
``python -m train.main`` from that reference; ``report`` reads the runs'
metrics and measures how far each final policy moved log pi(y_w) and
log pi(y_l) on the training pairs.
"""

import argparse
import gzip
import hashlib
import json
import pathlib
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import stats
from slpo_jax import models
from train import sft
from train.data import encode
from train.data import report as report_lib
from train.data import sources
from train.data import tokenization

REFERENCE_PAIRS = 1000
HELD_OUT_PAIRS = 300
MAX_LENGTH = 320
MAX_PROMPT_LENGTH = 128
SFT_STEPS = 400
SFT_BATCH = 16
SFT_RATE = 3e-3
BATCH = 16
RATE = 3e-4
# name: (loss.name, loss.beta)
ARMS = {
  "dpo_beta0.1": ("dpo", 0.1),
  "ipo_beta0.1": ("ipo", 0.1),
  "slpo_normalized": ("slpo_normalized", 0.1),
}
SHARE_BINS = (0.1, 0.5, 0.9)


def _reference_config() -> models.DecoderConfig:
  return models.get_config(
    "llama",
    "tiny",
    vocab_size=tokenization.ByteTokenizer().vocab_size,
    d_model=128,
    head_dim=32,
    mlp_dim=352,
    max_len=MAX_LENGTH,
  )


def _read_records(path: str) -> list[dict]:
  with gzip.open(path, "rt", encoding="utf-8") as file:
    return [json.loads(line) for line in file if line.strip()]


def _pair_key(record: dict) -> bytes:
  prompt, chosen, rejected = sources.split_hh_transcripts(
    record["chosen"], record["rejected"]
  )
  return hashlib.sha256(
    "\x00".join((prompt, chosen, rejected)).encode("utf-8")
  ).digest()


def split_records(records: list[dict]) -> dict[str, list[dict]]:
  """The three disjoint parts, by content hash; unusable records dropped."""
  keyed = []
  for record in records:
    try:
      keyed.append((_pair_key(record), record))
    except Exception:  # noqa: BLE001 - the same records the program skips.
      continue
  keyed.sort(key=lambda item: item[0])
  ranked = [record for _, record in keyed]
  cut = REFERENCE_PAIRS + HELD_OUT_PAIRS
  return {
    "reference": ranked[:REFERENCE_PAIRS],
    "held_out": ranked[REFERENCE_PAIRS:cut],
    "train": ranked[cut:],
  }


def _write(path: pathlib.Path, records: list[dict]) -> None:
  with gzip.open(path, "wt", encoding="utf-8") as file:
    for record in records:
      file.write(json.dumps(record) + "\n")


def _encoded_pairs(path: pathlib.Path):
  """Training pairs encoded exactly as the program encodes them."""
  data_report = report_lib.DataReport(source=str(path), split="train")
  policy = report_lib.BadRecordPolicy("skip", data_report)
  pairs = sources.read_jsonl_pairs(
    str(path),
    field_map=dict(prompt="prompt", chosen="chosen", rejected="rejected"),
    transcripts=True,
    policy=policy,
    report=data_report,
  )
  return encode.encode_pairs(
    pairs,
    tokenization.ByteTokenizer(),
    max_length=MAX_LENGTH,
    max_prompt_length=MAX_PROMPT_LENGTH,
    policy=policy,
    report=data_report,
  )


def _sft_batches(records: list[dict], seed: int):
  """Chosen transcripts, BOS + last bytes + EOS, in seeded epochs."""
  tokenizer = tokenization.ByteTokenizer()
  rows = []
  for record in records:
    body = list(record["chosen"].encode("utf-8"))[-(MAX_LENGTH - 2) :]
    rows.append([tokenizer.bos_id, *body, tokenizer.eos_id])
  rng = np.random.default_rng(seed)
  while True:
    order = rng.permutation(len(rows))
    for start in range(0, len(order) - SFT_BATCH + 1, SFT_BATCH):
      ids = np.full((SFT_BATCH, MAX_LENGTH), tokenizer.pad_id, np.int32)
      mask = np.zeros((SFT_BATCH, MAX_LENGTH), bool)
      for row, index in enumerate(order[start : start + SFT_BATCH]):
        tokens = rows[index]
        ids[row, : len(tokens)] = tokens
        mask[row, : len(tokens)] = True
      labels = np.concatenate(
        [ids[:, 1:], np.full((SFT_BATCH, 1), tokenizer.pad_id, np.int32)], 1
      )
      loss_mask = mask & np.concatenate(
        [mask[:, 1:], np.zeros((SFT_BATCH, 1), bool)], 1
      )
      yield dict(
        input_ids=ids, attention_mask=mask, labels=labels, loss_mask=loss_mask
      )


def response_logps(model, params, pairs, batch: int = 32) -> np.ndarray:
  """``[pairs, 2]`` log pi(y_w), log pi(y_l): each response given its prompt."""
  pad = tokenization.ByteTokenizer().pad_id

  @jax.jit
  def logps(ids, mask, counted):
    logits = model.apply(params, ids, mask)[:, :-1]
    token = jnp.take_along_axis(
      jax.nn.log_softmax(logits.astype(jnp.float32)), ids[:, 1:, None], -1
    )[..., 0]
    return jnp.sum(token * counted[:, 1:], axis=-1)

  rows = []
  for pair in pairs:
    for response in (pair.chosen, pair.rejected):
      rows.append((list(pair.prompt), list(response)))
  out = []
  for start in range(0, len(rows), batch):
    chunk = rows[start : start + batch]
    ids = np.full((batch, MAX_LENGTH), pad, np.int32)
    mask = np.zeros((batch, MAX_LENGTH), bool)
    counted = np.zeros((batch, MAX_LENGTH), np.float32)
    for i, (prompt, response) in enumerate(chunk):
      tokens = prompt + response
      ids[i, : len(tokens)] = tokens
      mask[i, : len(tokens)] = True
      counted[i, len(prompt) : len(tokens)] = 1.0
    out.append(np.asarray(logps(ids, mask, counted))[: len(chunk)])
  return np.concatenate(out).reshape(-1, 2).astype(np.float64)


def share_summary(logps: np.ndarray, chosen_len, rejected_len) -> dict:
  """The histogram of s and how it follows the responses' lengths."""
  share = 1.0 / (1.0 + np.exp(logps[:, 0] - logps[:, 1]))
  edges = (0.0, *SHARE_BINS, 1.0)
  bins = {
    f"{lo:g}-{hi:g}": float(np.mean((share >= lo) & (share < hi)))
    for lo, hi in zip(edges[:-1], edges[1:])
  }
  bins["0.9-1"] = float(np.mean(share >= 0.9))
  shorter = chosen_len < rejected_len
  longer = chosen_len > rejected_len
  return dict(
    pairs=len(share),
    share_bins=bins,
    chosen_shorter=float(np.mean(shorter)),
    equal_length=float(np.mean(chosen_len == rejected_len)),
    s_above_half_when_chosen_shorter=float(np.mean(share[shorter] > 0.5)),
    s_above_half_when_chosen_longer=float(np.mean(share[longer] > 0.5)),
    median_s=float(np.median(share)),
  )


def prepare(hh: str, workdir: pathlib.Path) -> None:
  workdir.mkdir(parents=True, exist_ok=True)
  parts = split_records(_read_records(hh))
  for name in ("held_out", "train"):
    _write(workdir / f"{name}.jsonl.gz", parts[name])
  print({name: len(part) for name, part in parts.items()})
  model = models.build(_reference_config())
  params = model.init(jax.random.key(0))
  start = time.time()
  params = sft.cached_fit(
    workdir / "reference",
    model,
    params,
    _sft_batches(parts["reference"], seed=0),
    steps=SFT_STEPS,
    learning_rate=SFT_RATE,
  )
  fitted = time.time() - start
  pairs = _encoded_pairs(workdir / "train.jsonl.gz")
  logps = response_logps(model, params, pairs)
  np.save(workdir / "reference_logps.npy", logps)
  lengths = np.array([(len(p.chosen), len(p.rejected)) for p in pairs])
  summary = share_summary(logps, lengths[:, 0], lengths[:, 1])
  summary["reference_fit_s"] = round(fitted, 1)
  summary["parameters"] = int(sum(np.size(x) for x in jax.tree.leaves(params)))
  (workdir / "shares.json").write_text(json.dumps(summary, indent=1))
  print(json.dumps(summary, indent=1))


def run_command(workdir: pathlib.Path, arm: str, seed: int) -> list[str]:
  loss, beta = ARMS[arm]
  steps = -(-sum(1 for _ in gzip.open(workdir / "train.jsonl.gz")) // BATCH)
  return [
    sys.executable,
    "-m",
    "train.main",
    f"--workdir={workdir / 'runs' / f'{arm}_seed{seed}'}",
    f"--config=configs/hh.py:{workdir / 'train.jsonl.gz'}",
    f"--config.data.eval_path={workdir / 'held_out.jsonl.gz'}",
    "--config.data.eval_fraction=0",
    f"--config.model.checkpoint={workdir / 'reference'}",
    f"--config.seed={seed}",
    f"--config.steps={steps}",
    f"--config.batch_size={BATCH}",
    f"--config.eval_every={steps}",
    "--config.eval_batches=0",
    f"--config.checkpoint_every={steps}",
    f"--config.data.max_length={MAX_LENGTH}",
    f"--config.data.max_prompt_length={MAX_PROMPT_LENGTH}",
    f"--config.data.length_buckets=({MAX_LENGTH},)",
    # One padded row per pair, as the runs of section 5.6 were made (the
    # preset itself packs rows and shares prompts).
    "--config.data.packing=False",
    "--config.data.share_prompt=False",
    "--config.model.attention_block=0",
    f"--config.loss.name={loss}",
    f"--config.loss.beta={beta}",
    f"--config.optimizer.learning_rate={RATE}",
    "--config.optimizer.warmup_steps=5",
  ]


def runs(workdir: pathlib.Path, seeds: int, only: list[str]) -> None:
  for seed in range(seeds):
    for arm in ARMS:
      if only and arm not in only:
        continue
      target = workdir / "runs" / f"{arm}_seed{seed}"
      if (target / "hf" / "config.json").exists():
        continue
      start = time.time()
      subprocess.run(run_command(workdir, arm, seed), check=True)
      (target / "wall_s.txt").write_text(f"{time.time() - start:.1f}\n")


def _last(metrics_file: pathlib.Path, key: str) -> float:
  value = float("nan")
  for line in metrics_file.read_text().splitlines():
    record = json.loads(line)
    if key in record:
      value = float(record[key])
  return value


def _first(metrics_file: pathlib.Path, key: str) -> float:
  for line in metrics_file.read_text().splitlines():
    record = json.loads(line)
    if key in record:
      return float(record[key])
  return float("nan")


def write_tables(workdir: pathlib.Path, rows: list[dict], out: pathlib.Path):
  """``out/hh_real.csv`` (one row per run) and ``out/hh_real_shares.csv``."""
  stats.write_csv(out / "hh_real.csv", rows)
  shares = json.loads((workdir / "shares.json").read_text())
  bins = shares.pop("share_bins")
  stats.write_csv(
    out / "hh_real_shares.csv",
    [{**{f"s_{name}": value for name, value in bins.items()}, **shares}],
  )


def report(workdir: pathlib.Path, out: pathlib.Path) -> None:
  pairs = _encoded_pairs(workdir / "train.jsonl.gz")
  reference = np.load(workdir / "reference_logps.npy")
  rows = []
  for target in sorted((workdir / "runs").glob("*_seed*")):
    if not (target / "hf" / "config.json").exists():
      continue
    arm, seed = target.name.rsplit("_seed", 1)
    model, params = models.load_hf_model(target / "hf")
    shift = response_logps(model, params, pairs) - reference
    metrics = target / "metrics.jsonl"
    rows.append(
      dict(
        arm=arm,
        seed=int(seed),
        accuracy=_last(metrics, "eval/rewards/accuracies"),
        chosen_shift=float(np.mean(shift[:, 0])),
        rejected_shift=float(np.mean(shift[:, 1])),
        sample_length=_last(metrics, "eval/samples/length"),
        reference_sample_length=_first(metrics, "eval/samples/length"),
        sample_kl=_last(metrics, "eval/samples/kl"),
        sample_ended=_last(metrics, "eval/samples/ended"),
        reference_sample_ended=_first(metrics, "eval/samples/ended"),
        wall_s=float((target / "wall_s.txt").read_text()),
      )
    )
  (workdir / "runs.json").write_text(json.dumps(rows, indent=1))
  write_tables(workdir, rows, out)
  for row in rows:
    print(row)
  keys = (
    "accuracy",
    "chosen_shift",
    "rejected_shift",
    "sample_length",
    "sample_kl",
    "sample_ended",
  )
  for arm in ARMS:
    mine = [r for r in rows if r["arm"] == arm]
    if not mine:
      print(f"{arm}: not run")
      continue
    parts = []
    for key in keys:
      mean, lo, hi = stats.mean_interval([r[key] for r in mine])
      parts.append(f"{key} {mean:.3f} [{lo:.3f}, {hi:.3f}]")
    print(f"{arm} ({len(mine)} seeds): " + "; ".join(parts))
  by_seed = {}
  for row in rows:
    by_seed.setdefault(row["seed"], {})[row["arm"]] = row["accuracy"]
  gaps = [
    accs["slpo_normalized"] - max(accs["dpo_beta0.1"], accs["ipo_beta0.1"])
    for accs in by_seed.values()
    if len(accs) == len(ARMS)
  ]
  if gaps:
    mean, lo, hi = stats.mean_interval(gaps)
    print(
      f"accuracy gap slpo_normalized - max(DPO, IPO) over {len(gaps)}"
      f" seeds: {mean:+.3f} [{lo:+.3f}, {hi:+.3f}]; per seed {gaps}"
    )


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("command", choices=("prepare", "runs", "report"))
  parser.add_argument("--workdir", type=pathlib.Path, default="/tmp/hh56")
  parser.add_argument("--hh", default="")
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--only", nargs="*", default=[])
  parser.add_argument("--out", type=pathlib.Path, default="docs/figures")
  args = parser.parse_args(argv)
  if args.command == "prepare":
    prepare(args.hh, args.workdir)
  elif args.command == "runs":
    runs(args.workdir, args.seeds, args.only)
  else:
    report(args.workdir, args.out)


if __name__ == "__main__":
  main()
