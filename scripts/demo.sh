#!/usr/bin/env bash
# The main job (`make demo`): sweeps/demo.yaml in SHELLS one-thread inline sweeps at once, then the report.
#
#   bash scripts/demo.sh [ROOT] [SHELLS]      # defaults: runs/demo, 2 (one per core of a 2-core laptop)
#
# Each shell trains the next run nobody has claimed (a run folder's lock keeps two shells off one run;
# docs/locking.md), so SHELLS processes share the runs without a scheduler: submitit's local executor would
# start all of them at once (it ignores array_parallelism, submitit issue #1685), and one-thread runs
# beyond the core count only slow each other down. Every 30 s a line gives each shell's run and step;
# each shell's training log is in ROOT/logs/. A rerun resumes: done runs are skipped, cut ones resume.
set -u
ROOT=${1:-runs/demo}
SHELLS=${2:-2}
BIN=${ALPHAFLOW_BIN:-.venv/bin}
SWEEP=sweeps/demo.yaml
case "$SHELLS" in ''|*[!0-9]*|0) echo "demo.sh: SHELLS must be a positive integer, got '$SHELLS'" >&2; exit 2;; esac

start=$(date +%s)
"$BIN/alphaflow" ref-stats --data digits || exit 1   # train and cache the feature classifier once, not per run
mkdir -p "$ROOT/logs"
pids=()
# background jobs of a script ignore Ctrl-C, so pass it on: the runs keep their checkpoints, and a rerun resumes
trap 'echo "demo.sh: stopping the shells" >&2; kill "${pids[@]}" 2>/dev/null; wait; exit 130' INT TERM
for i in $(seq 1 "$SHELLS"); do
  "$BIN/alphaflow" sweep "$SWEEP" --root "$ROOT" --executor inline > "$ROOT/logs/shell-$i.log" 2>&1 &
  pids+=($!)
  sleep 2  # the first shell claims its run before the next one looks
done

progress() {  # "shell 1: meanflow-s0 650/1500, 2 finished | shell 2: ..." from the shells' own logs (no Python)
  local i line=""
  for i in $(seq 1 "$SHELLS"); do
    line="$line${line:+ | }shell $i: $(awk '
      /^--- / { run = $2; sub(/-[0-9a-f]+$/, "", run); step = "starting" }
      /^step [0-9]+\/[0-9]+ / { step = $2 }
      /^finished / { done++ }
      END { printf "%s %s, %d finished", (run ? run : "-"), step, done }' "$ROOT/logs/shell-$i.log" 2>/dev/null)"
  done
  echo "$line"
}

tick=0
while :; do
  alive=0
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
  [ "$alive" = 1 ] || break
  sleep 5  # notice the end within seconds; print every 30 s
  tick=$(( (tick + 1) % 6 ))
  [ "$tick" = 0 ] && echo "[$(( $(date +%s) - start )) s] $(progress)"
done

failed=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    failed=1
    echo "demo.sh: shell $((i + 1)) failed; the end of $ROOT/logs/shell-$((i + 1)).log:" >&2
    tail -n 20 "$ROOT/logs/shell-$((i + 1)).log" >&2
  fi
done
echo "[$(( $(date +%s) - start )) s] trained"
"$BIN/alphaflow" sweep "$SWEEP" --root "$ROOT" --status
[ "$failed" = 0 ] || exit 1
"$BIN/alphaflow" report "$ROOT" || exit 1
echo "demo: $(( $(date +%s) - start )) s from the reference statistics to the report"
