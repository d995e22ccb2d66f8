"""The fault matrix: inject each fault into a small training run, rerun, and
check that nothing is lost.

  python -m bench.faults            # every fault (about 10 min on 2 CPU cores)
  python -m bench.faults --only kill,disk

The run is ``python -m train.main`` on a tiny Llama, 128 JSONL pairs, 12
steps, a checkpoint every 4, one CPU device. A reference run goes through
without a fault. For each fault the program is run with it, then (where the
fault is not a refusal) rerun with the same command, and checked:

* **resumed, bitwise**: the rerun ended with final parameters bitwise equal
  to the reference run's, and ``metrics.jsonl`` holds each step once;
* **refused**: the faulty run stopped with exit code 2 (or 0/130 for a
  signal) and printed its reason in one ``error:`` line, no traceback.

Columns: fault; outcome; exit code of the faulty run; lines the faulty run
printed on stderr beyond the progress lines (the reason, and nothing else
if the fault is handled); data lost (checkpoints or metric records lost or
duplicated after the rerun). Written to ``bench/results/faults.md``.
"""

import argparse
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import tempfile
import time

from bench import fault_runs as runs_lib


class Matrix:
  def __init__(self, runs: runs_lib.Runs):
    self.runs = runs
    self.rows = []
    reference = runs.scratch / "reference"
    code, _, err = runs.run(reference)
    if code != 0:
      raise SystemExit(f"the reference run failed:\n{err}")
    self.final = runs_lib.params(reference, runs_lib.STEPS)

  def workdir(self, name):
    path = self.runs.scratch / name
    shutil.rmtree(path, ignore_errors=True)
    return path

  def check_rerun(self, fault, workdir, code, err, *, flags=()):
    """Reruns the same command; records whether it ended like the reference."""
    rerun_code, _, rerun_err = self.runs.run(workdir, *flags)
    steps = runs_lib.metric_steps(workdir)
    lost = []
    if steps != list(range(1, runs_lib.STEPS + 1)):
      lost.append(f"metric steps {steps}")
    if rerun_code != 0:
      outcome = f"rerun failed (exit {rerun_code}): {runs_lib.reason_lines(rerun_err)[-1:]}"
    elif not runs_lib.same_params(
      runs_lib.params(workdir, runs_lib.STEPS), self.final
    ):
      outcome = "rerun finished, parameters differ"
    else:
      outcome = "resumed, bitwise equal"
    self.add(fault, outcome, code, err, lost)

  def add(self, fault, outcome, code, err, lost=()):
    lines = runs_lib.reason_lines(err)
    self.rows.append(
      (fault, outcome, code, len(lines), ", ".join(lost) or "none")
    )
    print(f"{fault}: {outcome} (exit {code}, {len(lines)} lines)", flush=True)
    for line in lines[:3]:
      print(f"    {line[:160]}", flush=True)

  def refused(self, fault, workdir, flags, expect="error:"):
    code, _, err = self.runs.run(workdir, *flags)
    lines = runs_lib.reason_lines(err)
    one_line = len(lines) == 1 and lines[0].startswith(expect)
    outcome = (
      "refused in one line" if one_line and code == 2 else "NOT one line"
    )
    self.add(fault, outcome, code, err)

  # The faults.

  def kill(self):
    rng = random.Random(0)
    for name, at in (
      ("SIGKILL mid-training", "step"),
      ("SIGKILL mid-save", "save"),
    ):
      for attempt in range(3 if at == "save" else 1):
        workdir = self.workdir(f"kill_{at}_{attempt}")
        process = self.runs.start(workdir)
        if at == "step":
          hit = runs_lib.wait(
            lambda w=workdir: len(runs_lib.metric_steps(w)) >= 6, process
          )
        else:
          # Kill while a checkpoint's temporary folder exists, after a
          # random extra pause of up to 20 ms.
          delay = rng.uniform(0, 0.02)
          hit = runs_lib.wait(lambda w=workdir: runs_lib.saving(w), process)
          time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        _, err = process.communicate()
        label = name if at == "step" else f"{name} #{attempt + 1}"
        if not hit:
          label += " (missed the window)"
        self.check_rerun(label, workdir, process.returncode, err)

  def stop(self):
    for signum, want in ((signal.SIGTERM, 0), (signal.SIGINT, 130)):
      workdir = self.workdir(f"stop_{signum.name}")
      process = self.runs.start(workdir)
      runs_lib.wait(
        lambda w=workdir: len(runs_lib.metric_steps(w)) >= 5, process
      )
      process.send_signal(signum)
      _, err = process.communicate()
      name = f"{signum.name} mid-training (exit {want} expected)"
      self.check_rerun(name, workdir, process.returncode, err)

  def damage(self):
    """Each kind of checkpoint file of the newest checkpoint, damaged."""
    source = self.workdir("damage_source")
    code, _, err = self.runs.run(source, "--config.steps=8")
    assert code == 0, err
    kinds = {
      "array data (largest file), truncated": lambda c: runs_lib.truncate(
        max(
          (f for f in (c / "state").rglob("*") if f.is_file()),
          key=lambda f: f.stat().st_size,
        )
      ),
      "state manifest.ocdbt, deleted": lambda c: (
        c / "state" / "manifest.ocdbt"
      ).unlink(),
      "state _METADATA, truncated": lambda c: runs_lib.truncate(
        c / "state" / "_METADATA"
      ),
      "data position (JSON), truncated": lambda c: runs_lib.truncate(
        c / "data" / "metadata"
      ),
      "run record (JSON), deleted": lambda c: (c / "run" / "metadata").unlink(),
      "_CHECKPOINT_METADATA, deleted": lambda c: (
        c / "_CHECKPOINT_METADATA"
      ).unlink(),
    }
    for kind, damage in kinds.items():
      workdir = self.workdir("damage")
      shutil.copytree(source, workdir)
      damage(workdir / "checkpoints" / "8")
      code, _, err = self.runs.run(workdir)
      steps = runs_lib.metric_steps(workdir)
      lost = (
        []
        if steps == list(range(1, runs_lib.STEPS + 1))
        else [f"metric steps {steps}"]
      )
      moved = (workdir / "checkpoints-damaged" / "8").exists()
      if code == 0 and runs_lib.same_params(
        runs_lib.params(workdir, runs_lib.STEPS), self.final
      ):
        outcome = "set aside, resumed from step 4, bitwise equal"
        if not moved:
          outcome = "read anyway, bitwise equal"
      else:
        outcome = (
          f"exit {code}: {(runs_lib.reason_lines(err) or [''])[-1][:80]}"
        )
      self.add(f"checkpoint 8: {kind}", outcome, code, err, lost)

  def disk(self):
    """The disk fills up in each phase that writes (a small tmpfs)."""
    phases = (
      ("4k", ("--config.reference.mode=precomputed",), "the reference cache"),
      ("8k", (), "metrics"),
      ("700k", (), "a checkpoint"),
    )
    for size, flags, what in phases:
      fault = f"disk full while writing {what}"
      mount = pathlib.Path(tempfile.mkdtemp(prefix="faults_tmpfs_"))
      mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
        capture_output=True,
      )
      if mounted.returncode:
        self.rows.append((fault, "not run: cannot mount a tmpfs", "", "", ""))
        continue
      try:
        workdir = mount / "run"
        code, _, err = self.runs.run(workdir, *flags)
        lines = runs_lib.reason_lines(err)
        one_line = len(lines) == 1 and "no space left on device" in lines[0]
        # Free space: move the workdir to a roomy disk and rerun there.
        roomy = self.workdir(f"disk_roomy_{size}")
        shutil.copytree(workdir, roomy)
      finally:
        subprocess.run(["umount", str(mount)], capture_output=True)
      if not one_line:
        self.add(fault, "NOT one line", code, err)
        continue
      self.check_rerun(
        f"{fault}, then space freed", roomy, code, err, flags=flags
      )

  def concurrent(self):
    workdir = self.workdir("concurrent")
    first = self.runs.start(workdir)
    runs_lib.wait(lambda: (workdir / "lock").exists(), first)
    code, _, err = self.runs.run(workdir)
    first.communicate()
    lines = runs_lib.reason_lines(err)
    refused = (
      code == 2 and len(lines) == 1 and "is in use by process" in lines[0]
    )
    steps = runs_lib.metric_steps(workdir)
    same = first.returncode == 0 and runs_lib.same_params(
      runs_lib.params(workdir, runs_lib.STEPS), self.final
    )
    outcome = (
      "second refused in one line; first bitwise equal"
      if refused and same
      else "FAILED"
    )
    lost = (
      []
      if steps == list(range(1, runs_lib.STEPS + 1))
      else [f"metric steps {steps}"]
    )
    self.add("two runs on one workdir", outcome, code, err, lost)

  def data(self):
    """Every malformed-record kind the JSONL reader knows, in error mode."""
    good = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"})
    bad = {
      "invalid_utf8": b"\xff\xfe not utf-8",
      "malformed_json": b'{"prompt": ',
      "not_an_object": b"[1, 2]",
      "missing_field": json.dumps({"prompt": "p", "chosen": "a"}).encode(),
      "non_string_field": json.dumps(
        {"prompt": "p", "chosen": 3, "rejected": "b"}
      ).encode(),
      "empty_response": json.dumps(
        {"prompt": "p", "chosen": " ", "rejected": "b"}
      ).encode(),
      "identical_responses": json.dumps(
        {"prompt": "p", "chosen": "a", "rejected": "a"}
      ).encode(),
    }
    for reason, line in bad.items():
      path = self.runs.scratch / f"bad_{reason}.jsonl"
      lines = (good + "\n").encode() * 20
      path.write_bytes(lines + line + b"\n" + lines)
      self.refused(
        f"data: {reason}",
        self.workdir(f"data_{reason}"),
        [
          f"--config.data.train_path={path}",
          "--config.data.on_bad_record=error",
        ],
      )
    # Records of HH transcripts, and a pair that truncation makes one.
    hh = {
      "no_assistant_turn": {
        "chosen": "\n\nHuman: hi",
        "rejected": "\n\nHuman: yo",
      },
      "prompt_mismatch": {
        "chosen": "\n\nHuman: a\n\nAssistant: x",
        "rejected": "\n\nHuman: b\n\nAssistant: y",
      },
    }
    hh_good = json.dumps(
      {
        "chosen": "\n\nHuman: a\n\nAssistant: x",
        "rejected": "\n\nHuman: a\n\nAssistant: y",
      }
    )
    for reason, record in hh.items():
      path = self.runs.scratch / f"bad_{reason}.jsonl"
      lines = (hh_good + "\n") * 20
      path.write_text(lines + json.dumps(record) + "\n" + lines)
      self.refused(
        f"data: {reason}",
        self.workdir(f"data_{reason}"),
        [
          "--config.data.source=hh",
          f"--config.data.train_path={path}",
          "--config.data.eval_path=",
          "--config.data.eval_fraction=0.2",
          "--config.data.on_bad_record=error",
        ],
      )
    path = self.runs.scratch / "bad_truncation.jsonl"
    same = json.dumps(
      {"prompt": "p", "chosen": "a" * 40 + "x", "rejected": "a" * 40 + "y"}
    )
    path.write_text((good + "\n") * 20 + same + "\n" + (good + "\n") * 20)
    self.refused(
      "data: identical_after_truncation",
      self.workdir("data_truncation"),
      [f"--config.data.train_path={path}", "--config.data.on_bad_record=error"],
    )
    marked = self.runs.scratch / "bom.jsonl"
    marked.write_bytes(
      b"\xef\xbb\xbf" + (self.runs.scratch / "train.jsonl").read_bytes()
    )
    code, _, err = self.runs.run(
      self.workdir("data_bom"), f"--config.data.train_path={marked}"
    )
    self.add(
      "data: UTF-8 byte-order mark",
      "trained" if code == 0 else "FAILED",
      code,
      err,
    )
    # KTO's unpaired records: a label that is not true or false.
    records = self.runs.scratch / "records.jsonl"
    record = json.dumps({"prompt": "p", "completion": "a b", "label": True})
    records.write_text(
      (record + "\n") * 20
      + json.dumps({"prompt": "p", "completion": "c", "label": "yes"})
      + "\n"
    )
    self.refused(
      "data: KTO record label 'yes'",
      self.workdir("data_kto_label"),
      [
        f"--config.data.train_path={records}",
        "--config.data.unpaired=True",
        "--config.loss.name=kto",
      ],
    )
    small = self.runs.scratch / "three.jsonl"
    small.write_text((good + "\n") * 3)
    self.refused(
      "data: 3 pairs for a batch of 8",
      self.workdir("data_small"),
      [f"--config.data.train_path={small}"],
    )

  def settings(self):
    file = self.runs.scratch / "a_file"
    file.write_text("")
    cases = {
      "negative learning rate": ["--config.optimizer.learning_rate=-1e-4"],
      "steps=0": ["--config.steps=0"],
      "unknown optimizer.name": ["--config.optimizer.name=adamm"],
      "misspelt key": ["--config.loss.nmae=dpo"],
      "unknown attention kernel": ["--config.model.attention_impl=flash"],
      "cudnn attention on packed rows": [
        "--config.model.attention_impl=cudnn",
        "--config.data.packing=True",
      ],
      # TRL's DPO options where TRL (or the loss) refuses them.
      "f_divergence_type with bco_pair": [
        "--config.loss.name=bco_pair",
        "--config.loss.f_divergence_type=js_divergence",
      ],
      "use_weighting with aot": [
        "--config.loss.name=aot",
        "--config.loss.use_weighting=True",
      ],
      "ld_alpha=1.5": ["--config.loss.ld_alpha=1.5"],
      "eval.top_p=0": ["--config.eval_every=4", "--config.eval.top_p=0"],
      "reward model with packing": [
        "--config.reward_model.train=True",
        "--config.data.packing=True",
      ],
      # KTO where its unpaired records cannot go.
      "kto with a precomputed reference": [
        "--config.loss.name=kto",
        "--config.reference.mode=precomputed",
      ],
      "kto with packing": [
        "--config.loss.name=kto",
        "--config.data.packing=True",
      ],
      "kto combined with sft": ["--config.loss.name=kto,sft"],
      "data.unpaired with dpo": ["--config.data.unpaired=True"],
      "shared prompts without packing": ["--config.data.share_prompt=True"],
      "splash attention on shared-prompt rows": [
        "--config.model.attention_impl=splash",
        "--config.data.packing=True",
        "--config.data.share_prompt=True",
      ],
      "shared-prompt rows too short": [
        "--config.data.packing=True",
        "--config.data.share_prompt=True",
        "--config.data.packed_length=40",
      ],
      "unknown lora.base_dtype": [
        "--config.model.lora.rank=4",
        "--config.model.lora.base_dtype=fp4",
      ],
    }
    for name, flags in cases.items():
      self.refused(f"config: {name}", self.workdir(f"config_{name}"), flags)
    self.refused("workdir under a regular file", file / "run", [])
    # A finished cosine run rerun with more steps: the schedule would jump.
    workdir = self.workdir("schedule")
    cosine = ["--config.optimizer.decay=cosine", "--config.steps=8"]
    self.runs.run(workdir, *cosine)
    self.refused(
      "resume with a longer cosine schedule",
      workdir,
      ["--config.optimizer.decay=cosine", "--config.steps=16"],
    )
    # A LoRA run over an NF4 base resumed over an int8 one: other weights.
    workdir = self.workdir("lora_base_dtype")
    lora = ["--config.model.lora.rank=4", "--config.steps=4"]
    self.runs.run(workdir, *lora, "--config.model.lora.base_dtype=nf4")
    self.refused(
      "resume a LoRA run over another base dtype",
      workdir,
      [*lora[:1], "--config.steps=8", "--config.model.lora.base_dtype=int8"],
    )

  def evaluate(self):
    """``train.evaluate``'s refusals, on the reference run's checkpoints."""
    empty = self.workdir("evaluate_empty")
    empty.mkdir()
    trained = self.runs.scratch / "reference"
    prompts = self.runs.scratch / "prompts.jsonl"
    prompts.write_text('{"prompt": "ab cd"}\n["ab cd"]\n')
    cases = {
      "workdir without checkpoints": ["--workdir", str(empty)],
      "no checkpoint of --steps": ["--workdir", str(trained), "--steps=5"],
      "prompt file with a bad record": [
        "--workdir",
        str(trained),
        f"--prompts={prompts}",
      ],
      "--reward_model a causal LM folder": [
        "--workdir",
        str(trained),
        f"--reward_model={trained / 'hf'}",
      ],
      "--against a run of other data": [
        "--workdir",
        str(trained),
        f"--against={self._synthetic_run()}",
      ],
    }
    for name, args in cases.items():
      code, _, err = self.runs.run_module("train.evaluate", *args)
      lines = runs_lib.reason_lines(err)
      one_line = len(lines) == 1 and lines[0].startswith("error:")
      outcome = (
        "refused in one line" if one_line and code == 2 else "NOT one line"
      )
      self.add(f"evaluate: {name}", outcome, code, err)

  def _synthetic_run(self):
    """A 4-step run of the synthetic task, for a comparison that fails."""
    workdir = self.workdir("evaluate_synthetic")
    self.runs.run(
      workdir,
      "--config.data.source=synthetic",
      "--config.data.train_path=",
      "--config.data.eval_path=",
      "--config.data.tokenizer=bytes",
      "--config.data.synthetic.num_prompts=64",
      "--config.data.synthetic.num_eval_prompts=16",
      "--config.steps=4",
    )
    return workdir

  def table(self) -> str:
    lines = [
      "| fault | outcome | exit code | lines printed | data lost |",
      "| --- | --- | --- | --- | --- |",
    ]
    for row in self.rows:
      lines.append("| " + " | ".join(str(x) for x in row) + " |")
    return "\n".join(lines)


GROUPS = (
  "kill",
  "stop",
  "damage",
  "disk",
  "concurrent",
  "data",
  "settings",
  "evaluate",
)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--only", default=",".join(GROUPS), help="comma-separated groups"
  )
  parser.add_argument(
    "--no-save", action="store_true", help="do not write bench/results"
  )
  args = parser.parse_args()
  started = time.time()
  with tempfile.TemporaryDirectory(prefix="faults_") as scratch:
    matrix = Matrix(runs_lib.Runs(pathlib.Path(scratch)))
    for group in args.only.split(","):
      getattr(matrix, group)()
  table = matrix.table()
  minutes = (time.time() - started) / 60
  print("\n" + table + f"\n\n{len(matrix.rows)} faults in {minutes:.1f} min")
  if not args.no_save:
    out = runs_lib.ROOT / "bench" / "results" / "faults.md"
    out.write_text(
      "# Fault matrix\n\n`python -m bench.faults` on "
      f"{os.uname().nodename} ({os.cpu_count()} CPUs), {minutes:.1f} min.\n\n"
      + table
      + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
  main()
