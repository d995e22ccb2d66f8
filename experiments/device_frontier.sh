#!/usr/bin/env bash
# The reduced gpu preset of docs/RESULTS.md section 4, for one GPU in at most
# 8 minutes: the chosen SLPO form, DPO and IPO at two strengths each, 3 seeds
# of the gpu preset's data (16,384 prompts, 1,024 held-out prompts x 4
# samples) for STEPS steps of 64 pairs. Writes the CSV, the figure and
# summary.json under OUT (default: $OUT, else /tmp/device_frontier).
#
#   FORM=slpo_normalized_ STEPS=400 LR=0.0003 bash experiments/device_frontier.sh
#
# FORM is a point name of experiments.frontier.points() (controlled_generation
# --grid frontier), LR the peak learning rate phase A chose for it.
set -euo pipefail
OUT="${OUT:-/tmp/device_frontier}"
FORM="${FORM:-slpo_normalized_}"
STEPS="${STEPS:-400}"
LR="${LR:-0.0003}"  # phase A: 3e-4 for the Eq. 6 forms and most baselines
PRESET="${PRESET:-gpu}"  # cpu: a quick check of the script itself
mkdir -p "$OUT"
# The GPU build of jax, only where there is a GPU (never into a CPU checkout).
if command -v nvidia-smi >/dev/null 2>&1; then
  python -m pip install -q -e ".[train]" "jax[cuda12]"
fi
start=$(date +%s)
python -m experiments.controlled_generation --preset "$PRESET" --grid frontier \
  --seeds 3 --steps "$STEPS" --eval-every 100 --learning-rate "$LR" \
  --only "$FORM,dpo_beta0.2,dpo_beta1,ipo_beta0.05,ipo_beta0.2" \
  --out "$OUT" --workdir /tmp/device_frontier_work 2>&1 \
  | tr '\r' '\n' | grep -v 'it/s\|s/it' | tee "$OUT/log.txt"
python - "$OUT" "$start" <<'PY'
import glob, json, pathlib, sys, time
from experiments import controlled_generation as cg, frontier
out, start = sys.argv[1], float(sys.argv[2])
rows = []
for path in glob.glob(f"{out}/controlled_generation_s*_lr*.csv"):
  rows += frontier.read_csv(pathlib.Path(path))
table = cg.summarize(rows)
import jax
summary = {
  "device": str(jax.devices()[0].device_kind),
  "seconds": time.time() - start,
  "configs": table,
}
with open(f"{out}/summary.json", "w") as f:
  json.dump(summary, f, indent=1, default=float)
print(cg.markdown_table(table))
PY
