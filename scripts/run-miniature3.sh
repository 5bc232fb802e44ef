#!/usr/bin/env bash
# The MLP's studies of verdict rules version 3 (scripts/run-v3.sh says how they run):
#   bash scripts/run-miniature3.sh            all three studies
#   bash scripts/run-miniature3.sh main       only runs/miniature3 (SGD and K-FAC, then Adam)
#   bash scripts/run-miniature3.sh budgets    only the two budget studies
set -euo pipefail
here="$(dirname "$0")"
case ${1:-all} in
    all) exec bash "$here/run-v3.sh" miniature3 steps budgets adam ;;
    main) exec bash "$here/run-v3.sh" miniature3 steps adam ;;
    budgets) exec bash "$here/run-v3.sh" miniature3 budgets ;;
    *) echo "unknown part '$1'; use all, main or budgets" >&2; exit 2 ;;
esac
