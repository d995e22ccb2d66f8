"""The packing benchmark's table: pairs/s, tokens/s, memory, model FLOP/s,
ratios, losses and the packed steps' breakdown."""

from __future__ import annotations

import statistics

from bench import harness

LOSS_TOLERANCE = 1e-4


def trl_positions(step) -> int:
  return sum(int(b["input_ids"].numel()) for b in step.batches)


def summarise(variants, samples, memory, rss, setting, peak) -> list[dict]:
  """Per variant: pass times over the rounds, tokens/s, ratios."""
  rows = []
  for variant in variants:
    walls = [w for w, _ in samples[variant.name]]
    passes = [
      sum(walls[i : i + setting.batches])
      for i in range(0, len(walls), setting.batches)
    ]
    trl = not variant.name.startswith("jax")
    tokens = (
      sum(int(b["attention_mask"].sum()) for b in variant.batches)
      if trl
      else sum(variant.tokens)
    )
    positions = trl_positions(variant) if trl else sum(variant.positions)
    row = {
      "name": variant.name,
      "pass_seconds": statistics.median(passes),
      "pass_seconds_all": passes,
      "cpu_seconds_per_pass": sum(c for _, c in samples[variant.name])
      / len(passes),
      "real_tokens_per_pass": tokens,
      "positions_per_pass": positions,
      # Positions holding a token: a shared prompt counts once here.
      "real_token_fraction": (tokens if trl else sum(variant.computed))
      / positions,
      "xla": memory.get(variant.name),
      "rss": rss.get(variant.name),
    }
    row["tokens_per_second"] = tokens / row["pass_seconds"]
    row["pairs_per_second"] = variant.pairs / row["pass_seconds"]
    row["positions_per_second"] = positions / row["pass_seconds"]
    row["model_flops_per_pass"] = variant.flops
    row["model_flops_per_second"] = variant.flops / row["pass_seconds"]
    row["fraction_of_matmul_peak"] = row["model_flops_per_second"] / peak
    rows.append(row)
  return rows


def ratios(rows) -> dict:
  """Pairs/s ratios (the same as real tokens/s: every variant steps through
  the same pairs)."""
  speed = {r["name"]: r["pairs_per_second"] for r in rows}
  pairs = [
    ("jax-shared", "jax-packed"),
    ("jax-shared", "jax-padded"),
    ("jax-shared", "trl"),
    ("jax-packed", "jax-padded"),
    ("jax-packed", "trl"),
    ("jax-packed", "trl-1thread"),
    ("jax-padded", "trl"),
    ("jax-padded", "trl-1thread"),
  ]
  return {
    f"{a}/{b}": speed[a] / speed[b]
    for a, b in pairs
    if a in speed and b in speed
  }


LABELS = {
  "jax-padded": "slpo-jax, padded",
  "jax-packed": "slpo-jax, packed",
  "jax-shared": "slpo-jax, shared prompt",
  "trl": "TRL DPOTrainer, {cores} threads",
  "trl-1thread": "TRL DPOTrainer, 1 thread",
}


def format_table(
  machine, setting, load, rows, speedups, losses, peak, parts
) -> str:
  cores = machine["cpu_count"]
  lines = [
    f"Machine: {machine['cpu_model']}, {cores} cores, shared;"
    f" jax {machine['jax']}, torch {machine['torch']},"
    f" transformers {machine['transformers']}, trl {machine['trl']}.",
    f"Load average (1/5/15 min): before timing {load['before']}, after"
    f" {load['after']}.",
    f"Data: {setting.batches} batches x {setting.pairs}"
    + (
      f" HH pairs (BPE {setting.vocab_size:,})"
      if setting.distribution == "hh"
      else " random pairs of short prompts and long responses"
    )
    + f", {rows[0]['real_tokens_per_pass']:,}"
    " real tokens per pass. Model: Llama-style, d 256, 4 layers, vocab"
    f" {setting.vocab_size:,}; DPO, online reference, AdamW; slpo-jax with"
    f" {setting.attention_impl} attention and the {setting.loss_head} head.",
    "",
    f"float32 matmul peak measured by this run: {peak / 1e9:.1f} GFLOP/s.",
    "",
    "| variant | s/pass [all rounds] | pairs/s | real tokens/s | CPU s/pass"
    " | positions/pass | real share | model GFLOP/s (of peak)"
    " | XLA temp MiB (largest shape) | RSS HWM rise MiB |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for r in rows:
    rounds = ", ".join(f"{x:.2f}" for x in r["pass_seconds_all"])
    xla = harness.mib(r["xla"]["largest_temp"]) if r["xla"] else "-"
    rss = harness.mib(r["rss"]["rss_rise"]) if r["rss"] else "-"
    lines.append(
      f"| {LABELS[r['name']].format(cores=cores)} | {r['pass_seconds']:.2f}"
      f" [{rounds}] | {r['pairs_per_second']:.2f} |"
      f" {r['tokens_per_second']:,.0f} |"
      f" {r['cpu_seconds_per_pass']:.2f} | {r['positions_per_pass']:,} |"
      f" {r['real_token_fraction']:.0%} |"
      f" {r['model_flops_per_second'] / 1e9:.1f}"
      f" ({r['fraction_of_matmul_peak']:.0%}) | {xla} | {rss} |"
    )
  lines += [
    "",
    "Pairs/s (= real tokens/s) ratios: "
    + ", ".join(f"{k} {v:.2f}x" for k, v in speedups.items()),
  ]
  first = {name: values[0] for name, values in losses.items()}
  worst = (
    max(abs(v - first["trl"]) for v in first.values())
    if "trl" in first
    else 0.0
  )
  verdict = "within" if worst <= LOSS_TOLERANCE else "NOT within"
  reference = "trl" if "trl" in first else next(iter(first), None)
  if reference is not None:
    worst = max(abs(v - first[reference]) for v in first.values())
    verdict = "within" if worst <= LOSS_TOLERANCE else "NOT within"
  lines.append(
    "First-step DPO loss (same weights, batch 1): "
    + ", ".join(f"{k} {v:.7f}" for k, v in first.items())
    + f"; largest |difference| {worst:.1e}, {verdict} {LOSS_TOLERANCE:.0e}."
  )
  if parts:
    lines += _breakdown_lines(parts)
  return "\n".join(lines)


def _breakdown_lines(parts) -> list[str]:
  """Seconds per part of one step on the first batch, and their shares."""
  names = list(next(iter(parts.values())))
  lines = [
    "",
    "Where a step's time goes (first batch; each part compiled and timed"
    " alone, bench/step_breakdown.py), seconds (share of their sum):",
    "",
    "| variant | " + " | ".join(names) + " |",
    "|---|" + "---:|" * len(names),
  ]
  for variant, seconds in parts.items():
    total = sum(seconds.values())
    cells = [f"{seconds[n]:.3f} ({seconds[n] / total:.0%})" for n in names]
    lines.append(f"| {LABELS[variant]} | " + " | ".join(cells) + " |")
  return lines
