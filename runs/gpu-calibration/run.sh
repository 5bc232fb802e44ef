#!/usr/bin/env bash
# The calibration of the gpu study's targets: its centre configurations (SGD lr 0.1 momentum 0.9;
# K-FAC lr 0.1 damping 0.003) at its smallest batch size, 128, for its budget there, E0 = 3
# epochs: ResNet-20 on CIFAR-10 (JPEG copy) at 32x32 with crop and flip, the full test set,
# fp32 on this project's 2-core CPU (about 8 and 25 minutes; the K-FAC run shared the cores).
# Recorded 2026-11-27: SGD 66.6%, K-FAC 75.5% test accuracy; runs/gpu/study.yaml sets its
# targets from them (60, 65, 70%).
set -euo pipefail
cd "$(dirname "$0")/../.."
common=(--dataset cifar10-jpeg --model resnet20 --batch-size 128 --momentum 0.9 --weight-decay 5e-4 --epochs 3 --precision fp32
        --lr-decay cosine --min-evals 6 --device cpu)
.venv/bin/python -m kfaclab train "${common[@]}" --optimizer sgd --lr 0.1 --target-acc 0.7 0.75 0.8 \
    --out runs/gpu-calibration/sgd-b128-e3.json
.venv/bin/python -m kfaclab train "${common[@]}" --optimizer kfac --lr 0.1 --damping 0.003 --kl-clip 0.001 \
    --target-acc 0.6 0.65 0.7 --out runs/gpu-calibration/kfac-b128-e3.json
