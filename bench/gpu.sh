#!/usr/bin/env bash
# shellcheck disable=SC2329  # environment() runs through run_stage.
# slpo-jax on one NVIDIA H100 or H200, in at most 8 minutes all told:
#
#   bash bench/gpu.sh          # from anywhere; it runs from the repository root
#
# NOT YET RUN ON A GPU: written and dry-run on a CPU only (see DRY RUN).
#
# Stages, each start and end stamped, each under a time limit, the whole
# within BUDGET_S seconds (default 465, 7 min 45 s):
#   1. environment: a Python whose jax sees the GPU (see ENVIRONMENT), and
#      the modules the benchmarks import;
#   2. python -m bench.attention_kernels: blockwise, cuDNN and the Pallas
#      GPU kernel side by side, forward+backward time and scratch memory of
#      one 1B-shaped attention layer, 1k to 8k tokens, padded and packed
#      rows -> gpu_attention.json and .md;
#   3. python -m bench.gpu_train_step: the DPO train step of a Llama 3.2 1B
#      shaped model, bf16, fused head, online reference, once per attention
#      kernel (blockwise and pallas_gpu on packed rows, cudnn on the same
#      pairs padded): compile time, step time, pairs/s, tokens/s, MFU, peak
#      GPU memory -> gpu_train_step.json;
#   4. python -m bench.gpu_trl_step: TRL's DPOTrainer on the same model
#      shape and pairs (trl, accelerate and datasets installed without their
#      dependencies from WHEELS when the image lacks them)
#      -> gpu_trl_step.json;
#   5. python -m bench.loss_head: fused vs plain loss head, float32 and
#      bfloat16 rows, with the bf16 TFLOP/s as a fraction of the chip's dense
#      bf16 peak -> gpu_loss_head.json and .md;
# then gpu_run.json (each stage's exit status and seconds) and gpu.log (all
# the output). Files go to RESULTS_DIR (default bench/results) and, when OUT
# is set, are copied there too after every stage. The exit status is 0 only
# if every stage succeeded.
#
# ENVIRONMENT. dev.py's .venv (the project's dev extra: PyTorch, transformers,
# ...) is too large for this budget and has a CPU jax, so this script makes
# its own:
#   * the first of $PYTHON, .venv/bin/python and python3 whose jax sees a GPU
#     is used as it is (this workplace's GPU image has jax 0.11.2 with the
#     CUDA 13 plugin, and no network);
#   * else VENV (default .venv) is created if missing and gets
#     "jax[$JAX_CUDA_EXTRA]==$JAX_VERSION" (default cuda12 and 0.10.2, the jax
#     the project's tests run with; pyproject.toml asks for jax>=0.4.35) and
#     the library's dependencies, from the package index;
#   * modules still missing (grain, ml_collections, ... which train.data and
#     configs import) are installed with --no-deps into SITE_DIR (default
#     /tmp/slpo-jax-gpu-site, put on PYTHONPATH), from the wheels in WHEELS
#     (default .whl) if there are any, else from the package index.
# With neither a GPU jax nor the index, the script stops, saying so.
#
# Other knobs: ATTENTION_ARGS, TRAIN_ARGS, TRL_ARGS, LOSS_HEAD_ARGS (extra
# arguments of the benchmarks, which win over the defaults), ALLOW_CPU=1
# (any jax device).
#
# Wheels to carry for TRL (from a machine with the package index):
#   python -m pip download --no-deps -d .whl trl==1.16.0 accelerate datasets \
#     dill multiprocess xxhash
#
# DRY RUN on a CPU (tiny shapes, nothing written to bench/results):
#   ALLOW_CPU=1 PYTHON=.venv/bin/python RESULTS_DIR=/tmp/gpu-dry \
#     ATTENTION_ARGS="--smoke --repeats 1" TRAIN_ARGS="--smoke" \
#     TRL_ARGS="--smoke" \
#     LOSS_HEAD_ARGS="--vocab 512 --tokens 64 --batch 2 --hidden-size 32" \
#     bash bench/gpu.sh

set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
START=$(date +%s)
BUDGET_S=${BUDGET_S:-465}
RESULTS_DIR=${RESULTS_DIR:-bench/results}
JAX_VERSION=${JAX_VERSION:-0.10.2}
JAX_CUDA_EXTRA=${JAX_CUDA_EXTRA:-cuda12}
VENV=${VENV:-.venv}
[[ $VENV == /* ]] || VENV=$ROOT/$VENV
WHEELS=${WHEELS:-.whl}
SITE_DIR=${SITE_DIR:-/tmp/slpo-jax-gpu-site}
ALLOW_CPU=${ALLOW_CPU:-0}
# Extra arguments, split on whitespace.
read -r -a LOSS_HEAD_ARGS <<<"${LOSS_HEAD_ARGS:-}"
read -r -a TRAIN_ARGS <<<"${TRAIN_ARGS:-}"
read -r -a ATTENTION_ARGS <<<"${ATTENTION_ARGS:-}"
read -r -a TRL_ARGS <<<"${TRL_ARGS:-}"
export PYTHONUNBUFFERED=1
# jax takes 75% of the GPU's memory by default; the 1B step wants more room
# on an 80 GB H100.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
export PYTHONPATH=$ROOT:$SITE_DIR${PYTHONPATH:+:$PYTHONPATH}
PY=

mkdir -p "$RESULTS_DIR"
LOG=$RESULTS_DIR/gpu.log
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1

STAGES=()

stamp() { echo "[$(date -u +%H:%M:%S) +$(($(date +%s) - START))s] $*"; }

# Seconds a stage may take: its cap, or what is left of the budget less a
# reserve for the summary, whichever is smaller.
allowance() {
  local cap=$1 left
  left=$((BUDGET_S - ($(date +%s) - START) - 10))
  echo $((cap < left ? cap : left))
}

mirror() {
  if [[ -n ${OUT:-} && $OUT != "$RESULTS_DIR" ]]; then
    mkdir -p "$OUT"
    cp -f "$RESULTS_DIR"/gpu_*.json "$RESULTS_DIR"/gpu_*.md "$LOG" "$OUT"/ \
      2>/dev/null || true
  fi
}

summary() {
  local i last=$((${#STAGES[@]} - 1))
  {
    echo "{"
    echo "  \"command\": \"bash bench/gpu.sh\","
    echo "  \"date\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\","
    echo "  \"python\": \"$PY\","
    echo "  \"budget_seconds\": $BUDGET_S,"
    echo "  \"total_seconds\": $(($(date +%s) - START)),"
    echo "  \"stages\": ["
    for i in "${!STAGES[@]}"; do
      echo "    ${STAGES[$i]}$( ((i < last)) && echo ,)"
    done
    echo "  ]"
    echo "}"
  } >"$RESULTS_DIR/gpu_run.json"
  mirror
}

# run_stage NAME CAP_SECONDS COMMAND...: a program runs under `timeout` (rc
# 124 in gpu_run.json: timed out); a shell function runs in this shell, with
# the seconds as its last argument, and keeps to them itself.
run_stage() {
  local name=$1 cap=$2 seconds rc=0 began
  shift 2
  seconds=$(allowance "$cap")
  if ((seconds < 20)); then
    stamp "SKIP $name: ${seconds}s left of the ${BUDGET_S}s budget"
    STAGES+=("{\"stage\": \"$name\", \"rc\": null, \"skipped\": true}")
    summary
    return 1
  fi
  stamp "START $name (at most ${seconds}s)"
  began=$(date +%s)
  if [[ $(type -t "$1") == function ]]; then
    "$@" "$seconds" || rc=$?
  else
    timeout --kill-after=10 "$seconds" "$@" || rc=$?
  fi
  stamp "END $name: exit status $rc after $(($(date +%s) - began))s"
  STAGES+=("{\"stage\": \"$name\", \"rc\": $rc, \"seconds\": $(($(date +%s) - began)), \"limit_seconds\": $seconds}")
  summary
  return "$rc"
}

# --- 1. Environment. -------------------------------------------------------

DEADLINE=0
until_deadline() {
  local left=$((DEADLINE - $(date +%s)))
  echo $((left > 1 ? left : 1))
}

sees_gpu() { # sees_gpu PYTHON: its jax imports, and device 0 is a GPU.
  timeout "$(until_deadline)" "$1" -c "import jax, sys; d = jax.devices()[0]
print(f'{sys.executable}: jax {jax.__version__}, {d.platform}, {d.device_kind}')
sys.exit(0 if d.platform == 'gpu' or '$ALLOW_CPU' == '1' else 1)"
}

# The JAX benchmarks' modules.
JAX_MODULES="jax flax optax numpy safetensors ml_collections grain
  bench.loss_head train.config_schema train.step train.data.row_packing
  bench.gpu_train_step bench.attention_kernels"

# missing_modules MODULE...: the top-level modules their imports lack.
missing_modules() {
  timeout "$(until_deadline)" "$PY" - "$@" <<'PYTHON'
import importlib
import sys
missing = []
for name in sys.argv[1:]:
  try:
    importlib.import_module(name)
  except ModuleNotFoundError as error:
    top = (error.name or name).split(".")[0]
    missing += [] if top in missing else [top]
print(" ".join(missing))
PYTHON
}

# install_missing MODULE...: what those imports lack, without dependencies
# (which could shadow the versions this Python's jax and torch were built
# with), into SITE_DIR; more rounds for what those lack in turn.
install_missing() {
  local names name dists
  for _ in 1 2 3 4; do
    # shellcheck disable=SC2086
    names=$(missing_modules "$@") || {
      echo "FAILED: $PY cannot run the import check"
      return 1
    }
    [[ -z $names ]] && return 0
    dists=()
    for name in $names; do dists+=("$(distribution "$name")"); done
    echo "Modules $names missing: installing ${dists[*]} into $SITE_DIR"
    pip_install --no-deps --target "$SITE_DIR" "${dists[@]}" || {
      echo "FAILED: ${dists[*]} could not be installed (no package index," \
        "and no matching wheels in $WHEELS)"
      return 1
    }
  done
  names=$(missing_modules "$@") || true
  if [[ -n $names ]]; then
    echo "FAILED: $PY still lacks the modules $names"
    return 1
  fi
}

pip_install() { # pip_install PIP_ARGS...: from WHEELS if any, else the index.
  if compgen -G "$WHEELS/*.whl" >/dev/null; then
    timeout "$(until_deadline)" "$PY" -m pip install -q --no-index \
      --find-links "$WHEELS" "$@" && return
    echo "Not all in $WHEELS; trying the package index"
  fi
  timeout "$(until_deadline)" "$PY" -m pip install -q --timeout 20 \
    --retries 1 "$@"
}

distribution() { # The pip name of a missing module.
  case $1 in
    ml_collections) echo ml-collections ;;
    array_record) echo array-record ;;
    yaml) echo PyYAML ;;
    absl) echo absl-py ;;
    google) echo protobuf ;;
    *) echo "$1" ;;
  esac
}

environment() {
  local candidate candidates=()
  DEADLINE=$(($(date +%s) + $1))
  if [[ -n ${PYTHON:-} ]]; then candidates+=("$PYTHON"); fi
  candidates+=("$VENV/bin/python" python3)
  for candidate in "${candidates[@]}"; do
    if command -v "$candidate" >/dev/null && sees_gpu "$candidate"; then
      PY=$(command -v "$candidate")
      break
    fi
  done
  if [[ -z $PY ]]; then
    echo "No Python here has a jax that sees a GPU; installing" \
      "jax[$JAX_CUDA_EXTRA]==$JAX_VERSION into $VENV"
    [[ -x $VENV/bin/python ]] || python3 -m venv "$VENV" || return 1
    PY=$VENV/bin/python
    if ! pip_install "jax[$JAX_CUDA_EXTRA]==$JAX_VERSION" "flax>=0.10" \
      "optax>=0.2.3" "numpy>=1.26" "safetensors>=0.4" ml-collections grain; then
      echo "FAILED: could not install jax[$JAX_CUDA_EXTRA]==$JAX_VERSION:" \
        "no package index, and no wheels in $WHEELS. Put the wheels there," \
        "or set PYTHON to an interpreter whose jax sees the GPU."
      return 1
    fi
    if ! sees_gpu "$PY"; then
      echo "FAILED: jax is installed in $VENV but sees no GPU (a CUDA 13" \
        "driver? try JAX_CUDA_EXTRA=cuda13)"
      return 1
    fi
  fi
  # shellcheck disable=SC2086
  install_missing $JAX_MODULES || return 1
  "$PY" -m pip list 2>/dev/null | grep -iE \
    '^(jax|jaxlib|jax-cuda[0-9]+-(plugin|pjrt)|flax|optax|numpy|grain) ' ||
    true
}

stamp "slpo-jax GPU benchmarks in $ROOT, budget ${BUDGET_S}s, results in" \
  "$RESULTS_DIR${OUT:+ and $OUT}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
  2>/dev/null || true
if ! run_stage environment 200 environment; then
  stamp "No environment: stopping"
  exit 1
fi
FAILED=0

# --- 2. Attention kernels. -------------------------------------------------
run_stage attention 80 "$PY" -m bench.attention_kernels --repeats 5 \
  --out "$RESULTS_DIR/gpu_attention.json" "${ATTENTION_ARGS[@]}" || FAILED=1
mirror

# --- 3. Train step, per attention kernel. ------------------------------------
# It writes its JSON after each compile and each variant, so a timeout still
# leaves what was measured.
run_stage train_step 210 "$PY" -m bench.gpu_train_step \
  --out "$RESULTS_DIR/gpu_train_step.json" "${TRAIN_ARGS[@]}" || FAILED=1

# --- 4. TRL on the same model shape and pairs. -------------------------------
trl_step() {
  DEADLINE=$(($(date +%s) + $1))
  install_missing trl accelerate datasets bench.gpu_trl_step || return 1
  timeout "$(until_deadline)" "$PY" -m bench.gpu_trl_step \
    --out "$RESULTS_DIR/gpu_trl_step.json" "${TRL_ARGS[@]}"
}
run_stage trl_step 120 trl_step || FAILED=1

# --- 5. Loss head. ---------------------------------------------------------
# 16,384 tokens (4 x 4,096), d = 2,048, V = 32,768 and 131,072: float32 and
# bfloat16 rows, 3 interleaved repeats after 1 warm-up.
SCRATCH=$(mktemp -d)
if run_stage loss_head 60 "$PY" -m bench.loss_head --vocab 32768 131072 \
  --tokens 16384 --batch 4 --hidden-size 2048 --repeats 3 --warmup 1 \
  --out "$SCRATCH" "${LOSS_HEAD_ARGS[@]}"; then
  for ext in json md; do
    cp "$SCRATCH"/loss_head_*."$ext" "$RESULTS_DIR/gpu_loss_head.$ext"
  done
  mirror
else
  FAILED=1
fi
rm -rf "$SCRATCH"

stamp "done in $(($(date +%s) - START))s; results in" \
  "$RESULTS_DIR${OUT:+ and $OUT}"
summary
exit "$FAILED"
