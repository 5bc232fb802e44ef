#!/usr/bin/env bash
# The coverage of the verdicts' 90% intervals on synthetic studies (kfaclab.results.coverage),
# shown on the book's verdicts page: version 3's method on 400 studies, the others on 200.
# About 5 minutes on the 2-core CPU when it is not shared.
set -euo pipefail
cd "$(dirname "$0")/../.."
"${PYTHON:-.venv/bin/python}" -W ignore -m kfaclab.results.coverage runs/coverage/coverage.json
