#!/usr/bin/env bash
# The studies of verdict rules version 3 (book/verdicts.md), cell by cell: one optimizer at one
# batch size per sweep, so that each (optimizer, batch size) grid finishes, brackets its optimum
# (kfaclab.sweep.bracket) and is complete before the next starts; a killed or stopped script
# resumes where it was (done runs are skipped). SGD and K-FAC before Adam: Ma et al.'s claims
# compare those two. 2 workers on the 2-core CPU.
#   bash scripts/run-miniature3.sh            all three studies
#   bash scripts/run-miniature3.sh main       only runs/miniature3
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
which=${1:-all}

cells() {  # study, optimizer, batch sizes...
    local study=$1 opt=$2
    shift 2
    for b in "$@"; do
        "$PY" -m kfaclab sweep "runs/$study/study.yaml" --workers 2 --only "$opt-b$b-*"
    done
}

MAIN_B="32 64 128 256 512 1024 2048 4096 8192 16384"
BUDGET_B="32 64 128 256 512 1024 2048 4096"
if [ "$which" = all ] || [ "$which" = main ]; then
    cells miniature3 sgd $MAIN_B
    cells miniature3 kfac $MAIN_B
fi
if [ "$which" = all ] || [ "$which" = budgets ]; then
    for study in miniature3-iterations miniature3-epochs; do
        cells "$study" sgd $BUDGET_B
        cells "$study" kfac $BUDGET_B
    done
fi
if [ "$which" = all ] || [ "$which" = main ]; then
    cells miniature3 adam $MAIN_B
fi
