"""Controlled generation: true reward against KL(pi || pi_ref) per loss.

The analogue of the DPO paper's IMDb experiment (Rafailov et al. 2023,
arXiv:2305.18290, section 6.1, Figure 2 left) on the synthetic sentiment task
(``slpo_jax.tasks.synthetic``):

1. One SFT reference is fitted to the task's base language and saved as a
   Hugging Face folder; every run starts from it and uses it as pi_ref
   (``model.checkpoint`` set to it, ``reference.sft_steps=0``).
2. Each run's pairs are two samples of that reference per training prompt,
   the higher true reward preferred (the training pipeline does this).
3. DPO and IPO over a grid of beta, hard SLPO (t=1), tempered SLPO at a few
   temperatures and soft SLPO are trained with the same optimizer, steps
   and data, for several seeds.
4. At every evaluation, the policy samples responses to the held-out prompts
   at temperature 1; their mean true reward and the sequence-level
   KL(pi || pi_ref) (``experiments.sampling_eval``) are logged through the
   loop's ``eval_callback`` along with the held-out pair metrics.

What a seed changes: ``config.seed`` seeds the reference samples that form
the training and held-out pairs (the prompts themselves are fixed by
``data.synthetic.language_seed``), the order of the training batches, and
the keys of the evaluation samples. It does not change the reference or the
policy's initial weights, which are the reference's.

Run::

  python -m experiments.controlled_generation [--preset cpu|gpu] \\
      [--seeds 3] [--out docs/figures] [--workdir /tmp/cg] [--pair-stats]

Writes ``controlled_generation.csv`` (one row per evaluation per run, the
reference's rows at step 0) and ``controlled_generation.png`` to ``--out``
and prints a table of per-config means with 95% intervals over seeds and the
measured runtime. A rerun with the same ``--workdir`` skips finished runs.
``--pair-stats`` instead prints how hard SLPO's gradient at the reference is
spread over the training pairs (``pair_statistics``).
"""

import argparse
import dataclasses
import json
import pathlib
import shutil
import time

import jax
import numpy as np

import slpo_jax
from configs import controlled_generation as cg_config
from experiments import sampling_eval
from experiments import stats
from slpo_jax import models
from train import data as data_lib
from train import loop
from train import task_reference
from train.data.task_pairs import synthetic_prompts

# Columns of the points CSV, in order.
COLUMNS = (
  "family",
  "loss",
  "hyperparameter",
  "seed",
  "step",
  "reward",
  "reward_stderr",
  "kl",
  "kl_stderr",
  "length",
  "eval_accuracy",
  "eval_chosen_logp",
  "eval_chosen_logp_shift",
  "eval_rejected_logp_shift",
)
FAMILIES = (
  "dpo",
  "ipo",
  "slpo_hard",
  "slpo_tempered",
  "slpo_soft",
  "slpo_normalized",
  "slpo_normalized_sync",
  "slpo_length_tempered",
  "slpo_diff",
  "slpo_token",
)
FAMILY_LABELS = {
  "dpo": "DPO",
  "ipo": "IPO",
  "slpo_hard": "SLPO hard (t=1)",
  "slpo_tempered": "SLPO tempered",
  "slpo_soft": "SLPO soft",
  "slpo_normalized": "SLPO normalized",
  "slpo_normalized_sync": "SLPO normalized, reference sync",
  "slpo_length_tempered": "SLPO length-tempered",
  "slpo_diff": "SLPO-diff",
  "slpo_token": "SLPO token-level",
  "reference": "reference",
}


@dataclasses.dataclass(frozen=True)
class GridPoint:
  """One (loss, hyperparameters) of the sweep.

  Attributes:
    family: plotting family, one of ``FAMILIES``.
    loss: ``config.loss.name``.
    hyperparameter: label such as ``beta=0.2`` or ``t=32``.
    overrides: ``config.loss`` fields set for this point.
    program: other config fields set for this point, by dotted path (for
      example ``("reference.sync_every", 60)``).
  """

  family: str
  loss: str
  hyperparameter: str
  overrides: tuple[tuple[str, float], ...]
  program: tuple[tuple[str, float], ...] = ()

  @property
  def name(self) -> str:
    return f"{self.loss}_{self.hyperparameter}".replace("=", "").replace(
      ",", "_"
    )


def grid(sweep) -> list[GridPoint]:
  """The sweep's grid points, from ``configs.controlled_generation``."""
  points = [
    GridPoint("dpo", "dpo", f"beta={b:g}", (("beta", b),))
    for b in sweep.dpo_betas
  ]
  points += [
    GridPoint("ipo", "ipo", f"beta={b:g}", (("beta", b),))
    for b in sweep.ipo_betas
  ]
  points += [
    GridPoint(
      "slpo_hard" if t == 1 else "slpo_tempered",
      "slpo",
      f"t={t:g}",
      (("temperature", t),),
    )
    for t in sweep.slpo_temperatures
  ]
  points += [
    GridPoint(
      "slpo_soft",
      "slpo_soft",
      f"t={t:g},alpha={a:g}",
      (("temperature", t), ("alpha", a)),
    )
    for t, a in sweep.slpo_soft
  ]
  return points


def frontier_grid() -> list[GridPoint]:
  """The frontier study's points (``experiments.frontier``, also
  ``--grid frontier``): the DPO and IPO baselines and the SLPO forms."""
  points = [
    GridPoint("dpo", "dpo", f"beta={b:g}", (("beta", b),))
    for b in (0.05, 0.2, 1.0)
  ]
  points += [
    GridPoint("ipo", "ipo", f"beta={b:g}", (("beta", b),))
    for b in (0.05, 0.2, 1.0)
  ]
  points += [
    GridPoint("slpo_normalized", "slpo_normalized", "", ()),
    GridPoint(
      "slpo_normalized_sync",
      "slpo_normalized",
      "sync=60",
      (),
      (("reference.sync_every", 60), ("reference.sync_mix", 1.0)),
    ),
    GridPoint("slpo_length_tempered", "slpo_length_tempered", "", ()),
    GridPoint("slpo_diff", "slpo_diff", "transfer=0.5", (("transfer", 0.5),)),
    GridPoint("slpo_token", "slpo_token", "", ()),
  ]
  return points


def fit_reference(config, workdir: pathlib.Path) -> pathlib.Path:
  """Fits (or loads from the cache) the SFT reference; returns its folder.

  The model is built and initialised as the training program builds it for
  ``config`` (``config.seed``), and fitted with ``config.reference``.
  """
  tokenizer = data_lib.make_tokenizer(config.data)
  model = models.build(
    models.get_config(
      config.model.family,
      config.model.size,
      vocab_size=tokenizer.vocab_size,
      dtype=config.model.dtype,
    )
  )
  params = model.init(jax.random.key(config.seed))
  task_reference.fitted_reference(config, workdir, model, params)
  return workdir / "reference"


def run_config(
  base_config, point: GridPoint, seed: int, reference_dir: pathlib.Path
):
  """The training config of one run: ``point`` from the shared reference."""
  config = base_config.copy_and_resolve_references()
  config.seed = seed
  config.loss.name = point.loss
  for key, value in point.overrides:
    config.loss[key] = value
  for path, value in point.program:
    *sections, key = path.split(".")
    target = config
    for section in sections:
      target = target[section]
    target[key] = value
  config.model.checkpoint = str(reference_dir)
  config.reference.sft_steps = 0
  return config


def _rows_from_metrics(
  metrics_path: pathlib.Path, point: GridPoint, seed: int, beta: float
) -> list[dict]:
  """The evaluation records of a finished run, as CSV rows.

  The shifts of log pi(y_w) and log pi(y_l) are taken from the original
  reference, whose held-out log-probs the first evaluation gives
  (``rewards/*`` are ``beta * (log pi - log pi_ref)`` with
  ``config.loss.beta``): with ``reference.sync_every`` the later ``rewards/*``
  are against the moved reference.
  """
  nan = float("nan")
  records = [json.loads(line) for line in metrics_path.read_text().splitlines()]
  records = [r for r in records if "sample/reward" in r]
  origin = {}
  if records:
    for side in ("chosen", "rejected"):
      first = records[0]
      origin[side] = first.get(f"eval/logps/{side}", nan) - (
        first.get(f"eval/rewards/{side}", nan) / beta
      )
  rows = []
  for record in records:
    rows.append(
      {
        "family": point.family,
        "loss": point.loss,
        "hyperparameter": point.hyperparameter,
        "seed": seed,
        "step": int(record["step"]),
        "reward": record["sample/reward"],
        "reward_stderr": record["sample/reward_stderr"],
        "kl": record["sample/kl"],
        "kl_stderr": record["sample/kl_stderr"],
        "length": record["sample/length"],
        "eval_accuracy": record.get("eval/rewards/accuracies", nan),
        "eval_chosen_logp": record.get("eval/logps/chosen", nan),
        "eval_chosen_logp_shift": record.get("eval/logps/chosen", nan)
        - origin["chosen"],
        "eval_rejected_logp_shift": record.get("eval/logps/rejected", nan)
        - origin["rejected"],
      }
    )
  return rows


def train_point(
  config, point: GridPoint, evaluator, run_dir: pathlib.Path, build_run=None
) -> list[dict]:
  """Trains one run (or reads it back if finished); returns its CSV rows.

  ``build_run(run_dir)``, when given, assembles the run instead of the
  program (an experiment that swaps the loss or the pairs).
  """
  done = run_dir / "points.json"
  if done.exists():
    return json.loads(done.read_text())
  if run_dir.exists():
    shutil.rmtree(run_dir)  # An interrupted run starts over.
  run = build_run(run_dir) if build_run is not None else None
  loop.train_and_evaluate(config, run_dir, run=run, eval_callback=evaluator)
  rows = _rows_from_metrics(
    run_dir / "metrics.jsonl", point, config.seed, config.loss.beta
  )
  done.write_text(json.dumps(rows))
  return rows


def reference_row(evaluator, reference_params, seed: int) -> dict:
  """The reference's own samples: KL 0 by construction, its reward."""
  metrics = evaluator(0, reference_params)
  nan = float("nan")
  return {
    "family": "reference",
    "loss": "reference",
    "hyperparameter": "",
    "seed": seed,
    "step": 0,
    "reward": metrics["sample/reward"],
    "reward_stderr": metrics["sample/reward_stderr"],
    "kl": metrics["sample/kl"],
    "kl_stderr": metrics["sample/kl_stderr"],
    "length": metrics["sample/length"],
    "eval_accuracy": nan,
    "eval_chosen_logp": nan,
    "eval_chosen_logp_shift": 0.0,
    "eval_rejected_logp_shift": 0.0,
  }


def pair_values(
  config, reference_dir: pathlib.Path, seed: int = 0, sampler=None
) -> dict[str, np.ndarray]:
  """Per-pair statistics of seed ``seed``'s training pairs under the
  reference: ``chosen_logps``, ``rejected_logps``, their lengths and
  complements, one entry per pair.

  ``sampler`` replaces ``task_reference.reference_sampler`` (same
  signature), for pairs drawn another way.
  """
  # Imported here: only these diagnostics need the objective's routing.
  from train import objective

  model, params = models.load_hf_model(reference_dir, dtype=config.model.dtype)
  tokenizer = data_lib.make_tokenizer(config.data, str(reference_dir))
  sample_fn = (sampler or task_reference.reference_sampler)(
    model,
    params,
    max_new_tokens=config.data.synthetic.max_new_tokens,
    seed=seed,
  )
  dataset = data_lib.load_dataset(
    config.data, tokenizer=tokenizer, split="train", sample_fn=sample_fn
  )

  def batch_values(p, b):
    out = objective.batch_stats(
      model, p, b, pair_values=False, head=slpo_jax.HeadOptions(fused=False)
    )
    return {k: v for k, v in out._asdict().items() if v is not None}

  stats_fn = jax.jit(batch_values)
  columns: dict[str, list[np.ndarray]] = {}
  for batch in dataset.batches(
    batch_size=256, seed=seed, shard_index=0, shard_count=1, repeat=False
  ):
    out = jax.device_get(stats_fn(params, jax.tree.map(np.asarray, batch)))
    real = np.asarray(batch.example_weight) > 0
    for name, value in out.items():
      columns.setdefault(name, []).append(np.asarray(value, np.float64)[real])
  return {name: np.concatenate(parts) for name, parts in columns.items()}


def pair_statistics(
  config, reference_dir: pathlib.Path, seed: int = 0
) -> dict[str, float]:
  """How hard SLPO's gradient at the reference is spread over the pairs.

  At the reference, hard SLPO's derivative with respect to log pi(y_l) is
  ``pi(y_l) / (1 - pi(y_l))`` and with respect to log pi(y_w) it is
  ``-pi(y_l) / (1 - pi(y_w))`` (DESIGN.md, "A fact the experiments must
  confront"): both scale with pi_ref(y_l). This measures log pi_ref of the
  training pairs of ``seed`` and the share of the summed loser factor that
  the pairs with the shortest rejected responses carry.

  Returns:
    Quantiles of the response lengths (tokens, EOS included) and of
    log pi_ref(y_w), log pi_ref(y_l); the fraction of pairs whose loser
    factor exceeds 1e-3; and the share of the summed factor carried by
    pairs whose rejected response has at most 3 tokens.
  """
  values = pair_values(config, reference_dir, seed)
  loser_factor = np.exp(values["rejected_logps"] - values["rejected_not_logps"])
  short = values["rejected_lengths"] <= 3
  result = {"pairs": float(len(loser_factor))}
  for name in (
    "chosen_logps",
    "rejected_logps",
    "chosen_lengths",
    "rejected_lengths",
  ):
    for q in (0.05, 0.5, 0.95):
      result[f"{name}_q{int(q * 100)}"] = float(np.quantile(values[name], q))
  result["loser_factor_above_1e-3"] = float(np.mean(loser_factor > 1e-3))
  result["short_rejected_fraction"] = float(np.mean(short))
  result["short_rejected_factor_share"] = float(
    loser_factor[short].sum() / loser_factor.sum()
  )
  # slpo_normalized at the reference: both of a pair's gradients are its
  # loser's share of the target, pi_ref(y_l) / w, and the winner's target
  # lies log(w / pi_ref(y_w)) nats above it.
  gap = values["rejected_logps"] - values["chosen_logps"]
  share = 1.0 / (1.0 + np.exp(-gap))
  winner_rise = np.logaddexp(0.0, gap)
  result["loser_share_above_0.1"] = float(np.mean(share > 0.1))
  result["loser_share_above_0.9"] = float(np.mean(share > 0.9))
  for q in (0.5, 0.9):
    result[f"winner_target_rise_q{int(q * 100)}"] = float(
      np.quantile(winner_rise, q)
    )
  result["winner_target_rise_mean"] = float(np.mean(winner_rise))
  return result


def write_points_csv(rows: list[dict], path: pathlib.Path) -> None:
  """Writes the points with the columns of ``COLUMNS``."""
  stats.write_csv(path, [{key: row[key] for key in COLUMNS} for row in rows])


def final_rows(rows: list[dict]) -> list[dict]:
  """Each run's last evaluation (and the reference rows)."""
  last = {}
  for row in rows:
    key = (row["loss"], row["hyperparameter"], row["seed"])
    if key not in last or row["step"] > last[key]["step"]:
      last[key] = row
  return list(last.values())


def summarize(rows: list[dict]) -> list[dict]:
  """Per-config means and 95% t-intervals over seeds at the final step."""
  groups: dict[tuple[str, str, str], list[dict]] = {}
  for row in final_rows(rows):
    groups.setdefault(
      (row["family"], row["loss"], row["hyperparameter"]), []
    ).append(row)
  table = []
  for (family, loss, hparam), members in groups.items():
    entry = {
      "family": family,
      "loss": loss,
      "hyperparameter": hparam,
      "seeds": len(members),
      "step": max(m["step"] for m in members),
    }
    for column in (
      "reward",
      "kl",
      "length",
      "eval_accuracy",
      "eval_chosen_logp_shift",
    ):
      mean, low, high = stats.mean_interval(
        np.array([m[column] for m in members])
      )
      entry[column] = (mean, low, high)
    table.append(entry)
  order = {name: i for i, name in enumerate(("reference",) + FAMILIES)}
  table.sort(
    key=lambda e: (
      order[e["family"]],
      e["loss"],
      _hparam_sort_key(e["hyperparameter"]),
    )
  )
  return table


def _hparam_sort_key(label: str) -> tuple:
  values = []
  for part in label.split(","):
    if "=" in part:
      values.append(float(part.split("=")[1]))
  return tuple(values)


def markdown_table(table: list[dict]) -> str:
  """The summary as a Markdown table (mean [95% interval])."""

  def cell(triple, digits):
    mean, low, high = triple
    if np.isnan(mean):
      return "-"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"

  lines = [
    "| loss | hyperparameter | seeds | final step | reward | KL (nats) |"
    " sample length | eval accuracy | shift of log pi(y_w) |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for e in table:
    lines.append(
      f"| {FAMILY_LABELS[e['family']]} | {e['hyperparameter'] or '-'} |"
      f" {e['seeds']} | {e['step']} | {cell(e['reward'], 3)} |"
      f" {cell(e['kl'], 2)} | {cell(e['length'], 1)} |"
      f" {cell(e['eval_accuracy'], 3)} |"
      f" {cell(e['eval_chosen_logp_shift'], 1)} |"
    )
  return "\n".join(lines)


def plot_frontier(
  rows: list[dict], path: pathlib.Path, title: str = ""
) -> None:
  """Reward against KL: every evaluation of every run, and config means.

  Small translucent markers are single evaluations; large outlined markers
  are each config's mean over seeds at the final step, labelled with its
  hyperparameter, and thin lines join a config's per-step means starting at
  the reference (the black star).
  """
  import matplotlib

  matplotlib.use("Agg")  # Files only; no display where this runs.
  import matplotlib.pyplot as plt

  colors = {
    "dpo": "tab:blue",
    "ipo": "tab:orange",
    "slpo_hard": "tab:gray",
    "slpo_tempered": "tab:green",
    "slpo_soft": "tab:red",
    "slpo_normalized": "tab:purple",
    "slpo_normalized_sync": "tab:brown",
    "slpo_length_tempered": "tab:olive",
    "slpo_diff": "tab:cyan",
    "slpo_token": "tab:pink",
  }
  markers = {
    "dpo": "o",
    "ipo": "s",
    "slpo_hard": "X",
    "slpo_tempered": "^",
    "slpo_soft": "D",
    "slpo_normalized": "P",
    "slpo_normalized_sync": "*",
    "slpo_length_tempered": "v",
    "slpo_diff": "h",
    "slpo_token": "d",
  }
  fig, ax = plt.subplots(figsize=(8.0, 5.5))
  reference = [r for r in rows if r["family"] == "reference"]
  ref_reward = (
    float(np.mean([r["reward"] for r in reference]))
    if reference
    else float("nan")
  )
  for family in FAMILIES:
    members = [r for r in rows if r["family"] == family]
    if not members:
      continue
    ax.scatter(
      [r["kl"] for r in members],
      [r["reward"] for r in members],
      s=12,
      alpha=0.3,
      color=colors[family],
      marker=markers[family],
      linewidths=0.8,
    )
    configs = sorted(
      {r["hyperparameter"] for r in members}, key=_hparam_sort_key
    )
    for index, hparam in enumerate(configs):
      runs = [r for r in members if r["hyperparameter"] == hparam]
      steps = sorted({r["step"] for r in runs})
      mean_kl = [0.0] + [
        np.mean([r["kl"] for r in runs if r["step"] == s]) for s in steps
      ]
      mean_reward = [ref_reward] + [
        np.mean([r["reward"] for r in runs if r["step"] == s]) for s in steps
      ]
      ax.plot(
        mean_kl, mean_reward, color=colors[family], linewidth=0.8, alpha=0.6
      )
      ax.scatter(
        mean_kl[-1:],
        mean_reward[-1:],
        s=70,
        color=colors[family],
        marker=markers[family],
        edgecolors="black",
        linewidths=0.8,
        zorder=3,
        label=FAMILY_LABELS[family] if index == 0 else None,
      )
      ax.annotate(
        hparam,
        (mean_kl[-1], mean_reward[-1]),
        fontsize=7,
        xytext=(4, 3),
        textcoords="offset points",
      )
  if reference:
    ax.scatter(
      [0.0],
      [ref_reward],
      s=160,
      marker="*",
      color="black",
      zorder=4,
      label="reference (SFT)",
    )
  # KL spans from a fraction of a nat to tens of nats across the grid.
  ax.set_xscale("symlog", linthresh=1.0)
  ax.set_xlabel(
    "KL(pi || pi_ref), nats per response (policy samples;"
    " linear below 1, log above)"
  )
  ax.set_ylabel("mean true reward of policy samples")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="upper left")
  if title:
    ax.set_title(title, fontsize=10)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=130)
  plt.close(fig)


def run_sweep(
  preset: str,
  seeds: int,
  out: pathlib.Path,
  workdir: pathlib.Path,
  *,
  learning_rate: float | None = None,
  only: tuple[str, ...] = (),
  points: list[GridPoint] | None = None,
  steps: int | None = None,
  eval_every: int | None = None,
  stem: str = "controlled_generation",
) -> list[dict]:
  """Fits the reference, trains the grid, writes the CSV and the figure.

  Args:
    preset: 'cpu' or 'gpu' (``configs.controlled_generation``).
    seeds: seeds 0..seeds-1 of every grid point.
    out: folder of the CSV and the PNG.
    workdir: reference, runs and compilation cache; finished runs are kept.
    learning_rate: replaces the preset's peak learning rate; the outputs
      are then named ``<stem>_lr<value>.{csv,png}``.
    only: grid point names (``GridPoint.name``, that point alone) or name
      prefixes to train; every point when empty.
    points: the grid; the preset's sweep (:func:`grid`) when None.
    steps, eval_every: replace the preset's; the outputs and runs are then
      named with ``_s<steps>``.
    stem: the outputs' file name before those suffixes.
  """
  start = time.perf_counter()
  base = cg_config.get_config(preset)
  runs = "runs"
  if steps is not None:
    base.steps = steps
    stem += f"_s{steps}"
    runs += f"_s{steps}"
  if eval_every is not None:
    base.eval_every = eval_every
  if learning_rate is not None:
    base.optimizer.learning_rate = learning_rate
    stem += f"_lr{learning_rate:g}"
    runs += f"_lr{learning_rate:g}"
  runs = workdir / runs
  sweep = cg_config.get_sweep(preset)
  points = grid(sweep) if points is None else points
  names = {p.name for p in points}
  # A full name selects that point alone, anything else is a prefix.
  points = [
    p
    for p in points
    if not only
    or any(
      p.name == o or (o not in names and p.name.startswith(o)) for o in only
    )
  ]
  if not points:
    raise ValueError(f"no grid point matches {only}")
  # Identical programs compiled by earlier runs (same loss, other seed) are
  # read back from disk instead of being compiled again.
  jax.config.update("jax_compilation_cache_dir", str(workdir / "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

  reference_dir = fit_reference(base, workdir / "reference_fit")
  model, reference_params = models.load_hf_model(
    reference_dir, dtype=base.model.dtype
  )
  prompts = synthetic_prompts(base.data, "eval")
  print(
    f"reference ready after {time.perf_counter() - start:.0f} s;"
    f" {len(points)} configs x {seeds} seeds"
  )

  rows = []
  for seed in range(seeds):
    evaluator = sampling_eval.SamplingEvaluator(
      model,
      reference_params,
      prompts,
      max_new_tokens=base.data.synthetic.max_new_tokens + 1,
      samples_per_prompt=sweep.samples_per_prompt,
      seed=seed,
    )
    rows.append(reference_row(evaluator, reference_params, seed))
    for point in points:
      run_start = time.perf_counter()
      config = run_config(base, point, seed, reference_dir)
      run_rows = train_point(
        config, point, evaluator, runs / f"{point.name}_seed{seed}"
      )
      rows.extend(run_rows)
      last = run_rows[-1]
      print(
        f"[{time.perf_counter() - start:6.0f} s] {point.loss}"
        f" {point.hyperparameter} seed {seed}: reward"
        f" {last['reward']:.3f}, KL {last['kl']:.2f}"
        f" ({time.perf_counter() - run_start:.0f} s)",
        flush=True,
      )
      # Written after every run, so a long sweep can be looked at early.
      write_points_csv(rows, out / f"{stem}.csv")

  write_points_csv(rows, out / f"{stem}.csv")
  steps = base.steps
  plot_frontier(
    rows,
    out / f"{stem}.png",
    title=f"Synthetic sentiment task, {preset} preset: {steps} steps,"
    f" peak learning rate {base.optimizer.learning_rate:g},\n"
    f"{seeds} seeds, {len(prompts)} held-out prompts x"
    f" {sweep.samples_per_prompt} samples",
  )
  print(markdown_table(summarize(rows)))
  print(
    f"runtime: {time.perf_counter() - start:.0f} s"
    f" ({(time.perf_counter() - start) / 60:.1f} min)"
  )
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", choices=cg_config.PRESETS, default="cpu")
  parser.add_argument(
    "--seeds",
    type=int,
    default=None,
    help="seeds per config (default: the preset's)",
  )
  parser.add_argument(
    "--out", type=pathlib.Path, default=pathlib.Path("docs/figures")
  )
  parser.add_argument(
    "--workdir", type=pathlib.Path, default=pathlib.Path("/tmp/cg")
  )
  parser.add_argument(
    "--pair-stats",
    action="store_true",
    help="only print `pair_statistics` of seed 0's pairs",
  )
  parser.add_argument(
    "--learning-rate",
    type=float,
    default=None,
    help="replace the preset's peak learning rate",
  )
  parser.add_argument(
    "--steps", type=int, default=None, help="replace the preset's steps"
  )
  parser.add_argument(
    "--eval-every",
    type=int,
    default=None,
    help="replace the preset's evaluation interval",
  )
  parser.add_argument(
    "--grid",
    choices=("preset", "frontier"),
    default="preset",
    help="the preset's sweep, or the points of the frontier study"
    " (experiments.frontier)",
  )
  parser.add_argument(
    "--only",
    default="",
    help="comma-separated grid point names or prefixes,"
    " e.g. 'slpo_t,dpo_beta0.2'",
  )
  args = parser.parse_args(argv)
  if args.pair_stats:
    base = cg_config.get_config(args.preset)
    reference_dir = fit_reference(base, args.workdir / "reference_fit")
    for name, value in pair_statistics(base, reference_dir).items():
      print(f"{name}: {value:.4g}")
    return
  seeds = args.seeds or cg_config.get_sweep(args.preset).seeds
  run_sweep(
    args.preset,
    seeds,
    args.out,
    args.workdir,
    learning_rate=args.learning_rate,
    only=tuple(o for o in args.only.split(",") if o),
    points=frontier_grid() if args.grid == "frontier" else None,
    steps=args.steps,
    eval_every=args.eval_every,
  )


if __name__ == "__main__":
  main()
