#!/usr/bin/env bash
# GPU check of the grading path: the lab's reference solution, handed in as a group's
# notebook, graded by `grader grade` in the bubblewrap sandbox with the GPU passed in.
# It must get every automatic point and its kernel must have trained on CUDA.
# Installs nothing: run it where the project is installed, with $GRADER_DATA set.
#
#   GRADER_DATA=/data/physionet bash benchmarks/gpu_grade.sh results/
set -uo pipefail
out=${1:?usage: gpu_grade.sh OUTDIR}
mkdir -p "$out"
py=${PYTHON:-python3}
lab=${LAB:-assignments/lab01}
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu-grade-XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/subs"
# The reference notebook (labNN.ipynb), handed in under the course's convention name_lab_NN.ipynb.
nbs=("$lab"/lab[0-9]*.ipynb)
[ ${#nbs[@]} -eq 1 ] && [ -f "${nbs[0]}" ] || { echo "gpu_grade.sh: want one lab<NN>.ipynb in $lab" >&2; exit 2; }
num=$(basename "${nbs[0]}" .ipynb); num=${num#lab}
[[ $num =~ ^[0-9]+$ ]] || { echo "gpu_grade.sh: ${nbs[0]}: no lab number in its name" >&2; exit 2; }
cp "${nbs[0]}" "$work/subs/$(printf 'reference_lab_%02d.ipynb' "$((10#$num))")"

start=$(date +%s)
timeout "${GRADE_TIMEOUT:-400}" "$py" -m grader grade "$work/subs" --lab "$lab" --out "$work/out" \
    -j 1 --sandbox "${SANDBOX:-bwrap}" 2>&1 | tee "$out/grade.log"
echo "grade: exit ${PIPESTATUS[0]}, $(( $(date +%s) - start )) s wall" | tee -a "$out/grade.log"
cp "$work/out/grades.csv" "$out/" 2>/dev/null
ls "$work/out/feedback" 2>/dev/null | tee -a "$out/grade.log"
"$py" - "$work/out" <<'PY' | tee "$out/gpu-grade.txt"
import json, sqlite3, sys
from pathlib import Path
out = Path(sys.argv[1])
db = sqlite3.connect(out / "grader.db")
for (text,) in db.execute("SELECT json FROM evidence"):
    ev = json.loads(text)
    print("status:", ev.get("status"), "| seconds:", ev.get("seconds"))
    print("isolation:", ev.get("isolation"))
nb = json.loads(next((out / "executed").glob("*.ipynb")).read_text())
for cell in nb["cells"]:
    for o in cell.get("outputs", []):
        t = o.get("text", "")
        t = "".join(t) if isinstance(t, list) else t
        if "device:" in t:
            print("kernel printed:", t.strip())
PY
