#!/usr/bin/env bash
# The CPU numbers of benchmarks/results/ffn_speed.md and training_step.md, then their tables regenerated from the JSON.
#
#  1. 1 thread: both benchmarks.  One thread is not stalled by other jobs the way an OpenMP
#     team is (see README.md), so these ratios hold on a busy machine too.
#  2. All cores: both benchmarks; each case first waits (up to 30 s) for a quiet moment and
#     is timed again once if other jobs stalled the CPUs more than QUIET_PSI % meanwhile;
#     then the cases that still ran under contention are measured once more and merged in.
#  3. Our two expert implementations against each other (all cores, key cases).
# About 30 minutes on a 2-core machine, more when it is busy.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=benchmarks/results
PSI=${QUIET_PSI:-25}
QUIET=(--quiet-psi "$PSI" --quiet-wait-s 30 --quiet-retries 1)

"$PYTHON" benchmarks/moe_ffn.py --threads 1 --out $OUT/moe_ffn_1thread.json
"$PYTHON" benchmarks/encoder_step.py --threads 1 --out $OUT/encoder_step_1thread.json

"$PYTHON" benchmarks/moe_ffn.py "${QUIET[@]}" --out $OUT/moe_ffn.json
"$PYTHON" benchmarks/moe_ffn.py --update $OUT/moe_ffn.json --redo-stalled "$PSI" \
    --quiet-psi "$PSI" --quiet-wait-s 60 --quiet-retries 1
"$PYTHON" benchmarks/encoder_step.py --quiet-psi "$PSI" --quiet-wait-s 60 --quiet-retries 3 \
    --out $OUT/encoder_step.json

"$PYTHON" benchmarks/moe_ffn.py "${QUIET[@]}" --experts 8,16 --frames 8192 --dims 256x1024 \
    --variants dense,moe,moe_gmm --out $OUT/moe_ffn_impls.json

"$PYTHON" benchmarks/make_reports.py
