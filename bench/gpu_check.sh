#!/usr/bin/env bash
# GPU check: one command, at most 8 minutes on one H100 (the part timeouts below sum to 460 s).
#
#   bash bench/gpu_check.sh --out DIR [--wheels DIR]   # on a machine with a CUDA GPU
#   bash bench/gpu_check.sh --dry-run --out DIR ...    # the same path on CPU (CI runs it)
#
#   --out DIR      receives gpu_check.json (every part's figures, rewritten after each part)
#                  and each part's log (setup.log, cuda_tests.log, ...): 7 files
#   --wheels DIR   the carried wheels of `python bench/gpu_wheels.py download` (every
#                  .gpu-wheels/N folder's files gathered in DIR): installed with
#                  `pip install --no-index --no-deps --target` into a scratch folder put on
#                  PYTHONPATH. Without it, Ray and Optuna come from this Python or the two
#                  search parts are skipped, with the reason in the JSON.
#
# Parts (each under `timeout`; budgets are the variables below):
#   setup             the wheels installed; a random-init encoder of MiniLM's shape and a
#                     WordPiece tokenizer over the demo task's words built here (bench/
#                     _encoders.py): no hub, no weights package
#   cuda_tests        tests/test_cuda.py alone, pytest -m cuda --timeout: a step on CUDA
#                     matches the CPU step, bf16 autocast with fp32 critic scores, no host
#                     wait in the step loop, the GPU generator in checkpoints, the memory cap
#                     under a GPU share, splits on the GPU. Needs no Ray.
#   step_time_minilm  bench/step_time.py's train step (floor / step / naive, fp32 and bf16),
#                     MiniLM's shape, demo task, batch 8 x 64 tokens. No Ray.
#   step_time_large   the same on a random-init encoder of roberta-large's shape (hidden 1024,
#                     24 layers, 16 heads, FFN 4096), built in the part. No Ray.
#   search_shared     tune/search.py with 4 trials per GPU (--gpus-per-trial 0.25). Ray.
#   search_whole      the same search with 1 trial per GPU (--gpus-per-trial 1). Ray.
# Every part writes its figures as it measures them: one stopped at its limit keeps them.
# Exit status 0 when every part that ran passed (a skipped part does not fail the check).
#
# A dry run replaces the GPU with the CPU: the CUDA tests are skipped (with their reason), the
# step time runs on cpu with a 2-layer, 128-wide stand-in for the large encoder, and the two
# searches run 2 vs 1 concurrent CPU trials.
#
# Offline on purpose: HF_HUB_OFFLINE=1 (no hub probe waits on DNS), Ray's usage stats off,
# a new local Ray on 127.0.0.1. Python: $PYTHON, else .venv/bin/python, else python3.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
DRY=0
OUT=""
WHEELS=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --out) OUT=${2:?--out needs a folder}; shift ;;
        --wheels) WHEELS=${2:?--wheels needs a folder}; shift ;;
        -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' \
                       "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ -z "$OUT" ]; then
    echo "gpu_check.sh: --out DIR is required (the JSON and every part's log go there)" >&2
    exit 2
fi
if [ -n "$WHEELS" ] && [ ! -d "$WHEELS" ]; then
    echo "gpu_check.sh: --wheels $WHEELS is not a folder (see bench/gpu_wheels.py)" >&2
    exit 2
fi
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || { echo "gpu_check.sh: cannot write $OUT" >&2; exit 2; }
[ -n "$WHEELS" ] && WHEELS=$(cd "$WHEELS" && pwd)
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3
fi

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
unset RAY_ADDRESS
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX") || exit 2
trap 'rm -rf "$WORK"' EXIT  # scratch only: figures and logs are in $OUT
SITE=$WORK/site
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

if [ "$DRY" = 1 ]; then
    DEVICE=cpu; LARGE=small
    T_SETUP=240; T_TESTS=240; PER_TEST=120
    MINILM_STEPS=2; MINILM_WARMUP=1; T_MINILM=300
    LARGE_STEPS=2; LARGE_WARMUP=1; T_LARGE=300
    TRIALS=2; EPOCHS=1; SHOTS=16; CPUS=1
    SHARED=(--max-concurrent 2); WHOLE=(--max-concurrent 1)
    T_SHARED=300; T_WHOLE=300
else
    # Budgets: the dry run's start-up costs (BENCHMARKS.md, GPU check) on a 16-core machine.
    DEVICE=cuda; LARGE=large
    T_SETUP=40                                           # wheels ~5 s, torch import, MiniLM shape
    T_TESTS=90; PER_TEST=45                              # 6 tests, demo 16-shot
    MINILM_STEPS=30; MINILM_WARMUP=5; T_MINILM=60        # x 6 (fp32/bf16 x floor/step/naive)
    LARGE_STEPS=20; LARGE_WARMUP=3; T_LARGE=110          # + building a 355M-weight encoder
    TRIALS=6; EPOCHS=2; SHOTS=128; CPUS=2                # 12 trial-epochs of 16 steps each
    SHARED=(--gpus-per-trial 0.25 --max-concurrent 4); WHOLE=(--gpus-per-trial 1 --max-concurrent 1)
    T_SHARED=70; T_WHOLE=90                              # Ray's start ~10-30 s each; 1 at a time
    if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
        echo "gpu_check.sh: torch sees no CUDA GPU here; use --dry-run for the CPU path" >&2
        exit 2
    fi
fi

: > "$WORK/status.tsv"
if command -v timeout > /dev/null; then LIMIT=(timeout -k 5); else LIMIT=(); fi
[ ${#LIMIT[@]} -gt 0 ] || echo "gpu_check.sh: no \`timeout\` here; parts run unbounded" >&2
STARTED=$SECONDS

report() {  # report [--final]: every part's figures so far -> $OUT/gpu_check.json
    local extra=()
    [ "$DRY" = 1 ] && extra+=(--dry-run)
    "$PY" bench/gpu_check.py report --work "$WORK" --logs "$OUT" --out "$OUT/gpu_check.json" \
        --wall-s "$((SECONDS - STARTED))" "${extra[@]}" "$@"
}

part() {  # part NAME TIMEOUT_S ARGS...: `python bench/gpu_check.py ARGS`, bounded, logged
    local name=$1 limit=$2
    shift 2
    local started=$SECONDS code
    echo "== $name (at most ${limit}s)" >&2
    "${LIMIT[@]}" "$limit" "$PY" bench/gpu_check.py "$@" --out "$WORK/$name.json" \
        --work "$WORK/$name.d" > "$OUT/$name.log" 2>&1
    code=$?
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$code" "$((SECONDS - started))" "$limit" "$*" \
        >> "$WORK/status.tsv"
    echo "   $name exited $code after $((SECONDS - started))s" >&2
    if [ "$code" != 0 ]; then
        echo "   its log ($OUT/$name.log) ends:" >&2
        tail -n 25 "$OUT/$name.log" >&2
    fi
    report
}

skip() {  # skip NAME REASON: recorded in the JSON with its reason
    printf '%s\tskip\t0\t0\t%s\n' "$1" "$2" >> "$WORK/status.tsv"
    echo "== $1 skipped: $2" >&2
    report
}

SETUP=(setup --site "$SITE" --encoders "$WORK/encoders" --shapes minilm)
[ -n "$WHEELS" ] && SETUP+=(--wheels "$WHEELS")
part setup "$T_SETUP" "${SETUP[@]}"
[ -d "$SITE" ] && export PYTHONPATH="$PYTHONPATH:$SITE"
MINILM=$WORK/encoders/minilm

part cuda_tests "$T_TESTS" tests --timeout "$PER_TEST" tests/test_cuda.py
part step_time_minilm "$T_MINILM" step-time --device "$DEVICE" --model "$MINILM" \
    --steps "$MINILM_STEPS" --warmup "$MINILM_WARMUP"
part step_time_large "$T_LARGE" step-time --device "$DEVICE" --shape "$LARGE" \
    --steps "$LARGE_STEPS" --warmup "$LARGE_WARMUP"

if RAY_MISSING=$("$PY" -c 'import optuna, ray.tune' 2>&1); then
    SEARCH=(search --num-samples "$TRIALS" --epochs "$EPOCHS" --shots "$SHOTS"
            --cpus-per-trial "$CPUS" --cache-dir "$WORK/cache" --model "$MINILM")
    part search_shared "$T_SHARED" "${SEARCH[@]}" "${SHARED[@]}"
    part search_whole "$T_WHOLE" "${SEARCH[@]}" "${WHOLE[@]}"
else
    REASON="Ray or Optuna does not import ($(echo "$RAY_MISSING" | tail -n 1)); carry them: \
python bench/gpu_wheels.py download, then --wheels DIR (README, GPU check)"
    skip search_shared "$REASON"
    skip search_whole "$REASON"
fi

report --final
code=$?
echo "gpu check: $((SECONDS - STARTED))s; figures and logs in $OUT"
exit "$code"
