#!/usr/bin/env bash
# The GPU checks of the reference: the full-profile bench (issue 2) and a full-profile
# calibration of lab 01 (issue 8). Installs nothing: run it where the project and its
# dependencies are installed, with the PhysioNet data under $GRADER_DATA.
#
#   GRADER_DATA=/data/physionet bash benchmarks/gpu_full.sh results/
#
# Writes into the given folder: bench-full.json, bench.log, key-full.json, calibrate.log.
set -uo pipefail
out=${1:?usage: gpu_full.sh OUTDIR}
mkdir -p "$out"
py=${PYTHON:-python3}
jobs=${BENCH_JOBS:-12}
nvidia-smi -L || echo "no nvidia-smi: the bench runs on what torch finds"

start=$(date +%s)
timeout "${BENCH_TIMEOUT:-300}" "$py" -m reference.bench --profile "${PROFILE:-full}" --jobs "$jobs" ${BENCH_ARGS:-} \
    --json "$out/bench-full.json" 2>&1 | tee "$out/bench.log"
echo "bench: exit ${PIPESTATUS[0]}, $(( $(date +%s) - start )) s wall" | tee -a "$out/bench.log"

start=$(date +%s)
timeout "${CALIBRATE_TIMEOUT:-300}" "$py" -m grader calibrate assignments/lab01 --seeds "${SEEDS:-3}" \
    --profile "${PROFILE:-full}" --jobs 3 --sandbox "${SANDBOX:-none}" --key-out "$out/key-full.json" \
    2>&1 | tee "$out/calibrate.log"
echo "calibrate: exit ${PIPESTATUS[0]}, $(( $(date +%s) - start )) s wall" | tee -a "$out/calibrate.log"
