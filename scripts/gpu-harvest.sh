#!/usr/bin/env bash
# The GPU window: one command on a lent GPU machine, under 9 minutes, that harvests as much of a
# study as fits (kfaclab.sweep.harvest) and leaves four files in $OUT: the archive of finished
# runs, the report, the bench and this log.
#
# Prepare on the CPU machine, in the repository root (once per session):
#   make test                                   # the environment, and the rehearsal passing
#   bash scripts/gpu-wheels.sh                  # .whl/: the notebook stack the image lacks, and the
#                                               # commit the records will name (commit first)
#   mkdir -p .data && cp ../shared/data/cifar10-jpeg.tar.gz .data/
#   bash scripts/gpu-tree.sh cut runs/gpu       # what travels: the committed records alone are over
#                                               # the device tool's 64 MiB; this keeps runs/gpu
# Then, with the device tool:
#   run(command="bash scripts/gpu-harvest.sh", carry=[".whl", ".data"], timeout_s=540)
# and, whatever came back:
#   bash scripts/gpu-tree.sh restore
#   .venv/bin/python -m kfaclab harvest-merge <files_at>/harvest-gpu.tar.gz runs/gpu
#
# On your own machine with a CUDA GPU (and the packages of requirements.txt installed, or the
# wheels above), the same command works without .whl: OUT=harvest-out bash scripts/gpu-harvest.sh
# Settings (environment): STUDY (runs/gpu/study.yaml), DEADLINE_S (480: seconds from the start
# of this script by which the harvest has stopped), RUNS_PER_GPU (8), EXTRA (more harvest flags).
set -uo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
OUT=${OUT:-$PWD/harvest-out}
STUDY=${STUDY:-runs/gpu/study.yaml}
DEADLINE_S=${DEADLINE_S:-480}
RUNS_PER_GPU=${RUNS_PER_GPU:-8}
mkdir -p "$OUT"
exec > >(tee "$OUT/harvest.log") 2>&1

echo "gpu-harvest: $(date -u +%FT%TZ) in $PWD, study $STUDY, deadline ${DEADLINE_S}s, $RUNS_PER_GPU runs per GPU"
if compgen -G ".whl/*.whl" >/dev/null; then
    # The carried wheels, kfaclab's own included (scripts/gpu-wheels.sh): the package is
    # installed, as `make` installs it here, not imported from the checkout by path.
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || { echo "gpu-harvest: installing the wheels failed"; exit 3; }
    export PYTHONPATH=/tmp/site
    compgen -G ".whl/kfaclab-*.whl" >/dev/null || export PYTHONPATH=/tmp/site:$PWD  # wheels from before kfaclab had one
else
    python3 -m pip install -q --no-deps --no-build-isolation -e . 2>/dev/null || export PYTHONPATH=$PWD
fi
# Records name the checkout they came from (kfaclab.train.record): its files are here, its commit
# was stamped beside the wheels.
export KFACLAB_CHECKOUT=$PWD
if [ -f .whl/PROVENANCE ]; then
    set -a; . .whl/PROVENANCE; set +a
    echo "gpu-harvest: checkout $KFACLAB_GIT_COMMIT, rules of $KFACLAB_RULES_COMMIT"
fi
if [ -z "${KFACLAB_CIFAR10_JPEG:-}" ] && [ -f .data/cifar10-jpeg.tar.gz ]; then
    export KFACLAB_CIFAR10_JPEG=$PWD/.data/cifar10-jpeg.tar.gz
fi
export KFACLAB_CACHE=${KFACLAB_CACHE:-/tmp/kfaclab-cache}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
python3 -c "import sys, torch, kfaclab, papermill; print('python', sys.version.split()[0], 'torch', torch.__version__,
'cuda', torch.cuda.is_available())" || { echo "gpu-harvest: the environment does not import"; exit 3; }

left=$(( DEADLINE_S - ($(date +%s) - start) ))
# shellcheck disable=SC2086
python3 -m kfaclab harvest "$STUDY" --out "$OUT" --deadline-s "$left" --gpus 0 --runs-per-gpu "$RUNS_PER_GPU" ${EXTRA:-}
status=$?
echo "gpu-harvest: exit $status after $(( $(date +%s) - start ))s"
ls -l "$OUT"
exit $status
