"""Sections 5.6 and 5.10: the loser's share s and three losses on real HH pairs.

  python -m experiments.hh_real prepare --hh FILE --workdir /tmp/hh56 \
      [--reference bpe4m]
  python -m experiments.hh_real runs --workdir /tmp/hh56 --seeds 3
  python -m experiments.hh_real report --workdir /tmp/hh56 [--out docs/figures]
  python -m experiments.hh_real score --hh FILE --workdir /tmp/hh56

``prepare`` splits the HH file into a reference part, held-out pairs and
training pairs (by content hash, so the split does not depend on file order),
writes the two pair files the program reads, fits the reference named by
``--reference`` (``experiments.hh_reference``; section 5.6's byte-level one
by default) to the reference part's chosen transcripts with the program's
SFT fit, and measures the share s = pi_ref(y_l) / (pi_ref(y_w) + pi_ref(y_l))
on the training pairs. ``score`` measures a fitted reference's nats per byte
on the held-out pairs' text (``prepare`` runs it too). ``runs`` trains each
loss for one epoch with ``python -m train.main`` from that reference;
``report`` reads the runs' metrics and measures how far each final policy
moved log pi(y_w) and log pi(y_l) on the training pairs.
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
import numpy as np

from experiments import hh_reference
from experiments import stats
from slpo_jax import models
from train import sft
from train.data import encode
from train.data import report as report_lib
from train.data import sources

REFERENCE_PAIRS = 1000
HELD_OUT_PAIRS = 300
BATCH = 16
RATE = 3e-4
# The figures' file stem of each reference, so section 5.6's files stay.
CSV_STEMS = {"byte0.45m": "hh_real", "bpe4m": "hh_real_ref4m"}
# name: (loss.name, loss.beta)
ARMS = {
  "dpo_beta0.1": ("dpo", 0.1),
  "ipo_beta0.1": ("ipo", 0.1),
  "slpo_normalized": ("slpo_normalized", 0.1),
}
SHARE_BINS = (0.1, 0.5, 0.9)


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


def setting(workdir: pathlib.Path) -> tuple[str, hh_reference.Reference]:
  """The reference a workdir was prepared with (section 5.6's if unsaid)."""
  path = workdir / "setting.json"
  name = json.loads(path.read_text())["reference"] if path.exists() else ""
  name = name or "byte0.45m"
  return name, hh_reference.REFERENCES[name]


def _encoded_pairs(path: pathlib.Path, tokenizer, reference):
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
    tokenizer,
    max_length=reference.max_length,
    max_prompt_length=reference.max_prompt_length,
    policy=policy,
    report=data_report,
  )


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


def score(workdir: pathlib.Path, hh: str) -> dict:
  """The fitted reference's nats per byte on held-out and fitted text."""
  _, reference = setting(workdir)
  parts = split_records(_read_records(hh))
  tokenizer = hh_reference.make_tokenizer(reference, workdir)
  model, params = models.load_hf_model(workdir / "reference")
  quality = {
    f"nats_per_byte_{name}": hh_reference.nats_per_byte(
      model,
      params,
      tokenizer,
      hh_reference.held_out_texts(parts[name]),
      max_length=reference.max_length,
    )
    for name in ("held_out", "reference")
  }
  (workdir / "reference_quality.json").write_text(json.dumps(quality, indent=1))
  print(quality)
  return quality


def prepare(hh: str, workdir: pathlib.Path, name: str) -> None:
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "setting.json").write_text(json.dumps(dict(reference=name)))
  reference = hh_reference.REFERENCES[name]
  parts = split_records(_read_records(hh))
  for part in ("held_out", "train"):
    _write(workdir / f"{part}.jsonl.gz", parts[part])
  print({part: len(records) for part, records in parts.items()})
  chosen = [record["chosen"] for record in parts["reference"]]
  tokenizer = hh_reference.make_tokenizer(reference, workdir, chosen)
  model = models.build(hh_reference.model_config(reference))
  params = model.init(jax.random.key(0))
  rows = hh_reference.sft_rows(chosen, tokenizer, reference.max_length)
  start = time.time()
  params = sft.cached_fit(
    workdir / "reference",
    model,
    params,
    hh_reference.sft_batches(
      rows, tokenizer.pad_id, reference.max_length, reference.sft_batch, 0
    ),
    steps=reference.sft_steps,
    learning_rate=reference.sft_rate,
  )
  fitted = time.time() - start
  pairs = _encoded_pairs(workdir / "train.jsonl.gz", tokenizer, reference)
  logps = hh_reference.response_logps(
    model,
    params,
    pairs,
    max_length=reference.max_length,
    pad_id=tokenizer.pad_id,
  )
  np.save(workdir / "reference_logps.npy", logps)
  lengths = np.array([(len(p.chosen), len(p.rejected)) for p in pairs])
  summary = share_summary(logps, lengths[:, 0], lengths[:, 1])
  summary["reference_fit_s"] = round(fitted, 1)
  summary["parameters"] = int(sum(np.size(x) for x in jax.tree.leaves(params)))
  summary.update(score(workdir, hh))
  (workdir / "shares.json").write_text(json.dumps(summary, indent=1))
  print(json.dumps(summary, indent=1))


def run_command(workdir: pathlib.Path, arm: str, seed: int) -> list[str]:
  loss, beta = ARMS[arm]
  _, reference = setting(workdir)
  length = reference.max_length
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
    f"--config.data.tokenizer={hh_reference.tokenizer_spec(reference, workdir)}",
    f"--config.data.max_length={length}",
    f"--config.data.max_prompt_length={reference.max_prompt_length}",
    f"--config.data.length_buckets=({length},)",
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


def write_tables(
  workdir: pathlib.Path, rows: list[dict], out: pathlib.Path, stem: str
):
  """``out/STEM.csv`` (one row per run) and ``out/STEM_shares.csv``."""
  stats.write_csv(out / f"{stem}.csv", rows)
  shares = json.loads((workdir / "shares.json").read_text())
  bins = shares.pop("share_bins")
  stats.write_csv(
    out / f"{stem}_shares.csv",
    [{**{f"s_{name}": value for name, value in bins.items()}, **shares}],
  )


def report(workdir: pathlib.Path, out: pathlib.Path) -> None:
  name, reference = setting(workdir)
  tokenizer = hh_reference.make_tokenizer(reference, workdir)
  pairs = _encoded_pairs(workdir / "train.jsonl.gz", tokenizer, reference)
  reference_logps = np.load(workdir / "reference_logps.npy")
  rows = []
  for target in sorted((workdir / "runs").glob("*_seed*")):
    if not (target / "hf" / "config.json").exists():
      continue
    arm, seed = target.name.rsplit("_seed", 1)
    model, params = models.load_hf_model(target / "hf")
    shift = (
      hh_reference.response_logps(
        model,
        params,
        pairs,
        max_length=reference.max_length,
        pad_id=tokenizer.pad_id,
      )
      - reference_logps
    )
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
  write_tables(workdir, rows, out, CSV_STEMS[name])
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
  parser.add_argument("command", choices=("prepare", "score", "runs", "report"))
  parser.add_argument("--workdir", type=pathlib.Path, default="/tmp/hh56")
  parser.add_argument("--hh", default="")
  parser.add_argument(
    "--reference", choices=tuple(hh_reference.REFERENCES), default="byte0.45m"
  )
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--only", nargs="*", default=[])
  parser.add_argument("--out", type=pathlib.Path, default="docs/figures")
  args = parser.parse_args(argv)
  if args.command == "prepare":
    prepare(args.hh, args.workdir, args.reference)
  elif args.command == "score":
    score(args.workdir, args.hh)
  elif args.command == "runs":
    runs(args.workdir, args.seeds, args.only)
  else:
    report(args.workdir, args.out)


if __name__ == "__main__":
  main()
