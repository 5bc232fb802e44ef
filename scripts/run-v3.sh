#!/usr/bin/env bash
# The studies of verdict rules version 3 (book/verdicts.md), cell by cell: one optimizer at one
# batch size per sweep, so that each (optimizer, batch size) grid finishes, brackets its optimum
# (kfaclab.sweep.bracket) and is complete before the next starts. A killed or stopped script
# resumes where it was (done runs are skipped; interrupted ones run again). 2 workers on the
# 2-core CPU, one thread each.
#   bash scripts/run-v3.sh SET PART...
#     SET:  miniature3 (the MLP) | resnet-cpu (ResNet-8)
#     PART: steps    SGD and K-FAC on the stopping-rule study (claims a-c, g, h)
#           budgets  SGD and K-FAC on the two budget studies (claims d, e)
#           adam     Adam on the stopping-rule study (claims i-k)
#   bash scripts/run-v3.sh queue   the order this CPU takes them in: each set's steps, then the
#                                  budgets, then Adam, the MLP's before the ResNet's in each
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}

cells() {  # study, optimizer, batch sizes...
    local study=$1 opt=$2
    shift 2
    for b in "$@"; do
        "$PY" -m kfaclab sweep "runs/$study/study.yaml" --workers 2 --threads 1 --only "$opt-b$b-*"
    done
}

part() {  # set, part
    local set=$1 what=$2 main budget
    case $set in
        miniature3) main="32 64 128 256 512 1024 2048 4096 8192 16384"; budget="32 64 128 256 512 1024 2048 4096" ;;
        resnet-cpu) main="32 64 128 256 512 1024 2048 4096 8192"; budget="32 64 128 256 512 1024 2048 4096" ;;
        *) echo "unknown set '$set'; use miniature3 or resnet-cpu" >&2; exit 2 ;;
    esac
    case $what in
        steps) cells "$set" sgd $main; cells "$set" kfac $main ;;
        budgets) for s in "$set-iterations" "$set-epochs"; do cells "$s" sgd $budget; cells "$s" kfac $budget; done ;;
        adam) cells "$set" adam $main ;;
        *) echo "unknown part '$what'; use steps, budgets or adam" >&2; exit 2 ;;
    esac
}

if [ "${1:-}" = queue ]; then
    part miniature3 steps; part resnet-cpu steps
    part miniature3 budgets; part resnet-cpu budgets
    part miniature3 adam; part resnet-cpu adam
    exit 0
fi
[ $# -ge 2 ] || { sed -n '7,13p' "$0" >&2; exit 2; }
set_name=$1
shift
for p in "$@"; do part "$set_name" "$p"; done
