#!/usr/bin/env bash
# How exact K-FAC is on each model class (kfaclab.exactness): the cosine of K-FAC's step with the
# exact natural-gradient step, on a narrow MLP and a narrow ResNet-8 with and without BatchNorm,
# at initialisation and after 300 SGD steps, at batch sizes 8, 32, 128 and dampings 1e-3, 1e-2,
# 1e-1, with the exact and the sampled (MC) Fisher. Dense float64 Fishers of about 5,000
# parameters: about 30 minutes on this project's 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/../.."
${PYTHON:-.venv/bin/python} -m kfaclab.exactness --out runs/exactness/exactness.json
