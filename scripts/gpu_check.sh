#!/usr/bin/env bash
# One unattended check of the whole CUDA path: scripts/gpu_check.sh [OUT.json]   (default gpu_check.json)
#
# Runs `python -m alphaflow doctor --gpu --only SECTION --out OUT.json` once per section (see
# alphaflow/perf/gpucheck.py), each in its own process under `timeout`: a hung kernel, or a CUDA context
# killed by an illegal access, then costs that one section and the others still run. Every process
# merges its entry into OUT.json; a section killed by the timeout, or a process that died without
# writing, is recorded as "fail" with the reason. The whole run stays inside BUDGET seconds (default
# 470, under 8 minutes on one H100/H200); a section that no longer fits is recorded as "skipped".
#
# Environment: PYTHON (the interpreter with a CUDA build of torch; default `python`, else `python3`),
# GPU_CHECK_BUDGET_S (the total budget in seconds), GPU_CHECK_SECTIONS (the "name:limit ..." list
# below, e.g. to rerun one section into a fresh OUT: the report is started anew). Exit status: 0 when
# no section failed, else 1.
set -u

OUT=${1:-gpu_check.json}
case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac  # absolute: we run from the repository root
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-$(command -v python || command -v python3)}
BUDGET=${GPU_CHECK_BUDGET_S:-470}

# section:limit in seconds. The limits cover a cold start (torch import, CUDA context, first kernels)
# plus the work sized in alphaflow/perf/gpucheck.py's GPU settings; compile pays inductor's cold compile of
# DiT-B/2. ddp is immediate on one GPU (it skips), and takes what is left on a machine with two.
SECTIONS=${GPU_CHECK_SECTIONS:-"environment:30 bench:100 train:70 attention:35 probe:30 compile:140 memory:40 ddp:150"}

rm -f "$OUT"
echo "gpu_check: $PY ($("$PY" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)' 2>&1)), report $OUT"
start=$SECONDS
for item in $SECTIONS; do
    name=${item%%:*}
    limit=${item##*:}
    left=$((BUDGET - (SECONDS - start)))
    if [ "$left" -lt 15 ]; then
        "$PY" -m alphaflow doctor --gpu --only "$name" --out "$OUT" \
            --record-skip "the check's ${BUDGET} s budget ran out before this section" --seconds 0
        echo "gpu_check: $name skipped (budget spent)"
        continue
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    t0=$SECONDS
    timeout -k 10 "$limit" "$PY" -m alphaflow doctor --gpu --only "$name" --out "$OUT"
    rc=$?
    took=$((SECONDS - t0))
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        "$PY" -m alphaflow doctor --gpu --only "$name" --out "$OUT" --seconds "$took" \
            --record-fail "timed out: killed after the section's ${limit} s limit"
    elif [ "$rc" -ne 0 ] && [ "$rc" -ne 1 ]; then  # 1 = the section reported its own failure
        "$PY" -m alphaflow doctor --gpu --only "$name" --out "$OUT" --seconds "$took" \
            --record-fail "the process exited with status $rc (a crash: see the output above)"
    fi
    echo "gpu_check: $name done in ${took} s (exit $rc)"
done

echo "gpu_check: $((SECONDS - start)) s in all; report in $OUT"
"$PY" - "$OUT" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
for name, entry in report["sections"].items():
    detail = entry.get("error") or entry.get("reason") or ""
    print(f"  {name:<12} {entry['status']:<8} {entry.get('seconds') or 0:7.1f} s  {detail[:150]}")
sys.exit(1 if report["summary"]["fail"] else 0)
EOF
