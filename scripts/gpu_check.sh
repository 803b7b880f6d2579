#!/usr/bin/env bash
# One unattended check of the whole CUDA path (docs/gpu_check.md):
#
#   bash scripts/gpu_check.sh OUT_DIR              the real check, one H100/H200-class GPU, under 8 minutes
#   bash scripts/gpu_check.sh --rehearse OUT_DIR   every section at the smallest size on the CPU (CI, ~2 minutes)
#
# OUT_DIR (created; default $OUT, else ./gpu_check) receives four files, all a remote runner that returns only
# OUT_DIR needs: gpu_check.json (every section: status ok/fail/skipped, seconds, results, error), gpu_check.md (the
# headline numbers, rewritten after every section and measurement, so a kill leaves it readable), gpu_check.log
# (the sections' output) and gpu_check_plans.log (the background section). An argument ending in .json names the
# report file instead (the older form); the other files go beside it.
#
# Each section runs as `python -m alphaflow.perf.gpucheck --gpu --only SECTION` in its own process under its own
# `timeout` (a hung kernel, an out-of-memory error or a dead CUDA context then costs that section's remaining
# numbers, never the report) and with GPU_CHECK_DEADLINE set, so that measurements which no longer fit are
# recorded as skipped. A section killed by its timeout, or whose process died, is recorded as "fail" with the
# reason and keeps what it had written. The sections and their limits come from `--list`
# (alphaflow/perf/gpucheck/settings.py); "plans" (CPU only) starts first, in the background. The sections together
# stay inside BUDGET seconds; one that no longer fits is recorded as "skipped".
#
# Environment: PYTHON (an interpreter with torch; default: the first of python3, python, .venv/bin/python that
# has torch; with --rehearse .venv/bin/python first), GPU_CHECK_BUDGET_S (default 450; 300 with --rehearse),
# GPU_CHECK_SECTIONS ("name:limit ..." to run only those, e.g. to rerun one section into a fresh OUT_DIR).
# Exit status: 0 when no section failed, 1 when one did, 2 when the check could not start.
set -u

MODE=--gpu
if [ "${1:-}" = "--rehearse" ]; then MODE=--cpu-rehearsal; shift; fi
ARG=${1:-${OUT:-gpu_check}}
case "$ARG" in
    *.json) DIR=$(dirname -- "$ARG"); NAME=$(basename -- "$ARG" .json) ;;
    *) DIR=$ARG; NAME=gpu_check ;;
esac
mkdir -p -- "$DIR" || exit 2
DIR=$(cd -- "$DIR" && pwd)
REPORT=$DIR/$NAME.json
MD=$DIR/$NAME.md
LOG=$DIR/$NAME.log
BGLOG=$DIR/${NAME}_plans.log
cd "$(dirname "$0")/.." || exit 2
export PYTHONUNBUFFERED=1

has_torch() { command -v "$1" >/dev/null 2>&1 &&
    "$1" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)' 2>/dev/null; }
if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
else
    if [ "$MODE" = --cpu-rehearsal ]; then candidates=".venv/bin/python python3 python"; else candidates="python3 python .venv/bin/python"; fi
    PY=
    for c in $candidates; do if has_torch "$c"; then PY=$c; break; fi; done
    PY=${PY:-python3}
fi
if [ "$MODE" = --cpu-rehearsal ]; then BUDGET=${GPU_CHECK_BUDGET_S:-300}; else BUDGET=${GPU_CHECK_BUDGET_S:-450}; fi
export GPU_CHECK_BUDGET_S=$BUDGET
doctor() { "$PY" -m alphaflow.perf.gpucheck "$MODE" --out "$REPORT" "$@"; }

rm -f -- "$REPORT" "$MD" "$LOG" "$BGLOG"
say() { echo "gpu_check: $*" | tee -a "$LOG"; }
say "$(date -u +%FT%TZ) mode $MODE, budget $BUDGET s, python $PY, report $REPORT"
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >>"$LOG" 2>&1

if ! LIST=$(doctor --list 2>>"$LOG"); then  # python or the package is broken: say so in the two files that matter
    say "cannot start: '$PY -m alphaflow.perf.gpucheck --list' failed (see $LOG)"
    printf '{"meta": {"mode": "%s"}, "sections": {}, "summary": {"error": "the check could not start; see %s"}}\n' \
        "${MODE#--}" "$NAME.log" >"$REPORT"
    { echo "# GPU check could not start"; echo; echo '```'; tail -n 40 "$LOG"; echo '```'; } >"$MD"
    exit 2
fi
if [ -n "${GPU_CHECK_SECTIONS:-}" ]; then  # keep --list's order and kinds; take the limits given
    WANT=" $GPU_CHECK_SECTIONS "
    SELECTED=
    for line in $LIST; do
        name=${line%%:*}
        given=$(echo "$WANT" | tr ' ' '\n' | grep "^$name:" | head -n 1)
        [ -n "$given" ] && SELECTED="$SELECTED $name:${given#*:}:1:$(echo "$line" | cut -d: -f4)"
    done
    LIST=$SELECTED
fi

start=$SECONDS
t0_epoch=$(date +%s)

# record NAME RC TOOK LIMIT: turn a process that did not end normally into a reasoned "fail"
record() {
    local name=$1 rc=$2 took=$3 limit=$4
    if [ "$rc" -eq 124 ] || { [ "$rc" -eq 137 ] && [ "$took" -ge "$limit" ]; }; then
        doctor --only "$name" --seconds "$took" --record-fail "timed out: killed after the section's ${limit} s limit"
    elif [ "$rc" -ne 0 ] && [ "$rc" -ne 1 ]; then  # 1 = the section reported its own failure
        doctor --only "$name" --seconds "$took" \
            --record-fail "the process exited with status $rc (a crash or a kill: see $NAME.log)"
    fi
}

run_one() {  # run_one NAME LIMIT LOGFILE [nice]
    local name=$1 limit=$2 logfile=$3 t0=$SECONDS rc
    echo "==================== $name (limit $limit s) ====================" >>"$logfile"
    GPU_CHECK_DEADLINE=$(( $(date +%s) + limit - 3 )) ${4:+nice -n 10} timeout -k 5 "$limit" \
        "$PY" -m alphaflow.perf.gpucheck "$MODE" --only "$name" --out "$REPORT" >>"$logfile" 2>&1
    rc=$?
    record "$name" "$rc" "$((SECONDS - t0))" "$limit" >>"$logfile" 2>&1
    echo "gpu_check: $name done in $((SECONDS - t0)) s (exit $rc)" | tee -a "$LOG"
}

BG_PIDS=
for line in $LIST; do  # the background sections first: CPU only, beside the GPU sections
    IFS=: read -r name limit least kind <<<"$line"
    [ "$kind" = bg ] || continue
    [ "$limit" -gt "$BUDGET" ] && limit=$BUDGET
    run_one "$name" "$limit" "$BGLOG" $([ "$MODE" = --gpu ] && echo nice) &  # niced beside the GPU's dispatch
    BG_PIDS="$BG_PIDS $!"
done

for line in $LIST; do
    IFS=: read -r name limit least kind <<<"$line"
    [ "$kind" = fg ] || continue
    left=$((BUDGET - (SECONDS - start)))
    if [ "$left" -lt "$least" ]; then
        doctor --only "$name" --seconds 0 \
            --record-skip "the check's ${BUDGET} s budget had ${left} s left; this section needs at least ${least} s" \
            >>"$LOG" 2>&1
        say "$name skipped (budget: $left s left, needs $least s)"
        continue
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    say "$name ... (limit $limit s, $left s of the budget left)"
    run_one "$name" "$limit" "$LOG"
done

for pid in $BG_PIDS; do wait "$pid"; done  # each is under its own timeout, inside the budget
rm -f -- "$DIR/.$NAME".*.tmp "$DIR/.$NAME".md.*.tmp  # a write cut short by a kill: only the four files go back
say "$((SECONDS - start)) s in all (sections started at $(date -u -d "@$t0_epoch" +%T 2>/dev/null || echo "$t0_epoch")); report $REPORT"
"$PY" - "$REPORT" "$MD" <<'EOF'
import json, sys
try:
    report = json.load(open(sys.argv[1]))
except Exception as exc:  # noqa: BLE001
    print(f"gpu_check: no readable report ({exc})")
    sys.exit(1)
for name, entry in report["sections"].items():
    detail = entry.get("error") or entry.get("reason") or ""
    print(f"  {name:<12} {entry['status']:<8} {entry.get('seconds') or 0:7.1f} s  {detail[:150]}")
print()
try:
    print(open(sys.argv[2]).read())
except OSError as exc:
    print(f"gpu_check: no markdown summary ({exc})")
sys.exit(1 if report["summary"].get("fail") or any(e["status"] == "running" for e in report["sections"].values()) else 0)
EOF
