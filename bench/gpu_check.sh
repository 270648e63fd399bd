#!/usr/bin/env bash
# The GPU check: what the first person with a GPU runs, at once, in one slice (<= 8 minutes on one H100).
#
#   bench/gpu_check.sh [--dry] [OUT_DIR]      OUT_DIR: default $OUT, else results/gpu_check
#
# Writes OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.md (the summary; also printed at the end),
# OUT_DIR/parts/<part>.json|.log and the runs' own folders. Parts, in order (bench/gpu_check.py
# says what each runs): env, plan, cpu_smoke, bench, blocks, strategies, warm, study. Each runs
# under its own `timeout` (LIMITS below), cut further so that the whole check stays within
# GPU_CHECK_BUDGET_S (default 450 s): a hang costs one part, never the slice; a part that no
# longer fits is reported skipped with that reason.
#
# --dry: the same script on a CPU machine (CI: tests/integration/test_bench_gpu_check.py). The CPU parts run; every
# CUDA part is reported skipped with its reason. Without --dry and without CUDA, the CUDA parts
# are skipped too ("no CUDA device") and the exit status is 1.
# Exit status: 0 when every part is ok (or, with --dry, ok or skipped), else 1.
# Environment: PYTHON (default: python), STAGERUN_MIRROR (a folder or URL holding
# tinyshakespeare/input.txt; default ../shared/data when present, else the public URL).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
OUT_DIR=""
for arg in "$@"; do
    case "$arg" in
        --dry) DRY=1 ;;
        -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "gpu_check.sh: unknown option $arg" >&2; exit 2 ;;
        *) OUT_DIR="$arg" ;;
    esac
done
OUT_DIR="${OUT_DIR:-${OUT:-results/gpu_check}}"
PYTHON="${PYTHON:-python}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-450}"
mkdir -p "$OUT_DIR/parts"
rm -f "$OUT_DIR"/parts/*.json
DRY_FLAG=()
[ "$DRY" = 1 ] && DRY_FLAG=(--dry)

# Seconds per part (H100 estimates in docs/performance.md "GPU"); the budget may cut them.
declare -A LIMITS=([env]=45 [plan]=60 [cpu_smoke]=60 [bench]=180 [blocks]=150 [strategies]=150 [warm]=120 [study]=180)
PARTS=(env plan cpu_smoke bench blocks strategies warm study)
START=$(date +%s)

for part in "${PARTS[@]}"; do
    elapsed=$(( $(date +%s) - START ))
    left=$(( BUDGET_S - elapsed - 15 ))   # 15 s kept for the summary
    limit=${LIMITS[$part]}
    (( left < limit )) && limit=$left
    if (( limit < 20 )); then
        printf '{"name": "%s", "status": "skipped", "reason": "no time left in the %s s budget (%s s used)", "seconds": 0}\n' \
            "$part" "$BUDGET_S" "$elapsed" > "$OUT_DIR/parts/$part.json"
        echo "gpu_check: $part: skipped (budget spent)"
        continue
    fi
    t0=$(date +%s)
    timeout -k 10 "$limit" "$PYTHON" bench/gpu_check.py part "$part" --out "$OUT_DIR" --limit "$limit" "${DRY_FLAG[@]}" \
        > "$OUT_DIR/parts/$part.log" 2>&1
    rc=$?
    tail -n 1 "$OUT_DIR/parts/$part.log"
    if (( rc == 124 || rc == 137 )); then
        # killed by its time limit (its own children are in its process group: timeout kills them too)
        printf '{"name": "%s", "status": "timeout", "reason": "killed after its %s s limit", "seconds": %s}\n' \
            "$part" "$limit" "$(( $(date +%s) - t0 ))" > "$OUT_DIR/parts/$part.json"
        echo "gpu_check: $part: timeout after ${limit} s"
    fi
done

"$PYTHON" bench/gpu_check.py summarize --out "$OUT_DIR" --budget "$BUDGET_S" --elapsed "$(( $(date +%s) - START ))" \
    "${DRY_FLAG[@]}"
