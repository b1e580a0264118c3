#!/usr/bin/env bash
# GPU check: one command, at most 8 minutes on one GPU (the part timeouts below sum to 440 s).
#
#   bash bench/gpu_check.sh              # on a machine with a CUDA GPU
#   bash bench/gpu_check.sh --dry-run    # the same path on CPU, tiny budgets (CI runs it)
#   bash bench/gpu_check.sh --out FILE   # where the JSON goes (default: bench/results/
#                                        # gpu_check.json; a dry run: $TMPDIR/gpu_check_dry_run.json)
#
# Parts (each under `timeout`; budgets are the variables below):
#   cuda_tests        pytest -m cuda: a step on CUDA matches the CPU step, bf16 autocast is
#                     finite, a trial's memory is capped at its GPU share, splits live on the GPU
#   step_time_minilm  bench/step_time.py's train step (floor / step / naive, fp32 and bf16),
#                     MiniLM, demo task, batch 8 x 64 tokens
#   step_time_large   the same on a random-init encoder of roberta-large's shape (hidden 1024,
#                     24 layers, 16 heads, FFN 4096), built locally: no hub here
#   search_shared     tune/search.py with 4 trials per GPU (--gpus-per-trial 0.25)
#   search_whole      the same search with 1 trial per GPU (--gpus-per-trial 1)
# The JSON holds every part's figures, status, seconds and command, and the search
# throughput (trial-epochs per second) of both with their ratio. Exit status 0 when every
# part ran and passed.
#
# A dry run replaces the GPU with the CPU: the CUDA tests are skipped (with their reason), the
# step time runs on cpu with a 2-layer, 128-wide stand-in for the large encoder, and the two
# searches run 2 vs 1 concurrent CPU trials.
#
# Python: $PYTHON, else .venv/bin/python, else python3 (with this project installed).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
DRY=0
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --out) OUT=${2:?--out needs a file}; shift ;;
        -h|--help) sed -n '2,29p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3
fi

if [ "$DRY" = 1 ]; then
    DEVICE=cpu; LARGE=small
    T_TESTS=240
    MINILM_STEPS=2; MINILM_WARMUP=1; T_MINILM=300
    LARGE_STEPS=2; LARGE_WARMUP=1; T_LARGE=300
    TRIALS=2; EPOCHS=1; SHOTS=16; CPUS=1
    SHARED=(--max-concurrent 2); WHOLE=(--max-concurrent 1)
    T_SEARCH=300
    OUT=${OUT:-${TMPDIR:-/tmp}/gpu_check_dry_run.json}
else
    DEVICE=cuda; LARGE=large
    T_TESTS=90                                           # 4 tests, demo 16-shot
    MINILM_STEPS=30; MINILM_WARMUP=5; T_MINILM=60        # x 6 (fp32/bf16 x floor/step/naive)
    LARGE_STEPS=20; LARGE_WARMUP=3; T_LARGE=120          # + building a 355M-weight encoder
    TRIALS=8; EPOCHS=3; SHOTS=128; CPUS=2                # 24 trial-epochs of 16 steps each
    SHARED=(--gpus-per-trial 0.25 --max-concurrent 4); WHOLE=(--gpus-per-trial 1 --max-concurrent 1)
    T_SEARCH=85
    OUT=${OUT:-bench/results/gpu_check.json}
    if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
        echo "gpu_check.sh: torch sees no CUDA GPU here; use --dry-run for the CPU path" >&2
        exit 2
    fi
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX") || exit 2
trap 'rm -rf "$WORK"' EXIT
: > "$WORK/status.tsv"
if command -v timeout > /dev/null; then LIMIT=(timeout -k 5); else LIMIT=(); fi
[ ${#LIMIT[@]} -gt 0 ] || echo "gpu_check.sh: no \`timeout\` here; parts run unbounded" >&2

part() {  # part NAME TIMEOUT_S ARGS...: `python bench/gpu_check.py ARGS`, bounded, logged
    local name=$1 limit=$2
    shift 2
    local started=$SECONDS code
    echo "== $name (at most ${limit}s)" >&2
    if [ ${#LIMIT[@]} -gt 0 ]; then
        "${LIMIT[@]}" "$limit" "$PY" bench/gpu_check.py "$@" --out "$WORK/$name.json" \
            --work "$WORK/$name.d" > "$WORK/$name.log" 2>&1
    else
        "$PY" bench/gpu_check.py "$@" --out "$WORK/$name.json" --work "$WORK/$name.d" \
            > "$WORK/$name.log" 2>&1
    fi
    code=$?
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$code" "$((SECONDS - started))" "$limit" "$*" \
        >> "$WORK/status.tsv"
    if [ "$code" != 0 ]; then
        echo "   $name exited $code after $((SECONDS - started))s; its log ends:" >&2
        tail -n 25 "$WORK/$name.log" >&2
    fi
}

STARTED=$SECONDS
part cuda_tests "$T_TESTS" tests tests
part step_time_minilm "$T_MINILM" step-time --device "$DEVICE" --model minilm \
    --steps "$MINILM_STEPS" --warmup "$MINILM_WARMUP"
part step_time_large "$T_LARGE" step-time --device "$DEVICE" --shape "$LARGE" \
    --steps "$LARGE_STEPS" --warmup "$LARGE_WARMUP"
SEARCH=(search --num-samples "$TRIALS" --epochs "$EPOCHS" --shots "$SHOTS"
        --cpus-per-trial "$CPUS" --cache-dir "$WORK/cache")
part search_shared "$T_SEARCH" "${SEARCH[@]}" "${SHARED[@]}"
part search_whole "$T_SEARCH" "${SEARCH[@]}" "${WHOLE[@]}"

REPORT=(report --work "$WORK" --out "$OUT" --wall-s "$((SECONDS - STARTED))")
[ "$DRY" = 1 ] && REPORT+=(--dry-run)
"$PY" bench/gpu_check.py "${REPORT[@]}"
code=$?
echo "gpu check: $((SECONDS - STARTED))s; figures in $OUT"
exit "$code"
