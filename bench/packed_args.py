"""The flags of ``bench.packed_step`` and what they set."""

from __future__ import annotations

import argparse
import pathlib

from bench import harness

JAX_VARIANTS = ("jax-padded", "jax-packed", "jax-shared")
TRL_VARIANTS = ("trl", "trl-1thread")


def parser(doc: str, Setting, results_dir) -> argparse.ArgumentParser:
  """The benchmark's argument parser (``Setting`` gives the defaults)."""
  parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
  parser.add_argument("--hh", type=pathlib.Path, help="an HH-RLHF .jsonl.gz")
  parser.add_argument(
    "--pairs", type=int, default=Setting.pairs, help="pairs per batch"
  )
  parser.add_argument(
    "--batches", type=int, default=Setting.batches, help="batches per pass"
  )
  parser.add_argument(
    "--attention-impl",
    choices=("blockwise", "dense"),
    default=Setting.attention_impl,
    help="model.attention_impl of both slpo-jax variants",
  )
  parser.add_argument(
    "--loss-head",
    choices=("fused", "plain"),
    default=Setting.loss_head,
    help="model.loss_head of both slpo-jax variants",
  )
  parser.add_argument(
    "--variants",
    default=",".join(JAX_VARIANTS + TRL_VARIANTS),
    help="comma-separated subset of " + ", ".join(JAX_VARIANTS + TRL_VARIANTS),
  )
  parser.add_argument(
    "--distribution",
    choices=("hh", "short-prompt"),
    default=Setting.distribution,
    help="HH pairs, or random pairs of short prompts and long responses",
  )
  parser.add_argument(
    "--shared-length",
    type=int,
    default=Setting.shared_length,
    help="row length of the shared-prompt variant",
  )
  parser.add_argument(
    "--attention-block",
    type=int,
    default=Setting.attention_block,
    help="the blockwise kernel's tile (model.attention_block)",
  )
  parser.add_argument(
    "--breakdown",
    action="store_true",
    help="also time the parts of the packed and shared-prompt steps",
  )
  parser.add_argument(
    "--json", action="store_true", help="print one JSON object per variant"
  )
  parser.add_argument(
    "--rounds", type=int, default=4, help="interleaved timed passes per variant"
  )
  parser.add_argument(
    "--seed", type=int, default=0, help="seeds the sample and the weights"
  )
  harness.add_run_arguments(
    parser,
    quick_help="1 round, no RSS subprocesses, nothing saved",
    results_dir=results_dir,
    workers=JAX_VARIANTS + ("trl",),
  )
  return parser


def setting_of(args, Setting):
  return Setting(
    pairs=args.pairs,
    batches=args.batches,
    seed=args.seed,
    attention_impl=args.attention_impl,
    loss_head=args.loss_head,
    shared_length=args.shared_length,
    attention_block=args.attention_block,
    distribution=args.distribution,
  )


def worker_arguments(args, workdir) -> list[str]:
  return [
    "--rss-workdir",
    str(workdir),
    "--pairs",
    str(args.pairs),
    "--batches",
    str(args.batches),
    "--seed",
    str(args.seed),
    "--attention-impl",
    args.attention_impl,
    "--loss-head",
    args.loss_head,
    "--shared-length",
    str(args.shared_length),
    "--attention-block",
    str(args.attention_block),
    "--distribution",
    args.distribution,
  ]
