#!/usr/bin/env bash
# K-FAC vs SGD on a small real problem, the reference for issue 3's "loss falls faster" check.
# Data: CIFAR-10 (JPEG q75 copy, ../shared/data/cifar10-jpeg.tar.gz), a class-stratified subset
# of 5,000 training and 1,000 test images, downsampled to 16x16, no augmentation.
# Model: MLP 768-256-10. Budget: 2 epochs at batch 128 (78 iterations). Hardware: 2-core CPU.
# SGD: the best of lr in {0.01, 0.03, 0.1} (momentum 0.9, no weight decay): lr 0.03.
# K-FAC: lr 0.03, damping 0.3, KL clip 1e-3, T_cov 5, T_inv 20, MC Fisher, eigen method.
# Usage (from the repository root): bash runs/kfac-vs-sgd-mlp/run.sh
set -euo pipefail
here=runs/kfac-vs-sgd-mlp
common=(--dataset cifar10-jpeg --model mlp:256 --batch-size 128 --epochs 2 --train-subset 5000
        --test-subset 1000 --resolution 16 --no-augment --min-evals 10 --lr-decay constant
        --momentum 0.9 --weight-decay 0 --lr 0.03 --device cpu --quiet)
.venv/bin/python -m kfaclab train "${common[@]}" --optimizer sgd --out "$here/sgd-lr0.03.json"
.venv/bin/python -m kfaclab train "${common[@]}" --optimizer kfac --damping 0.3 --cov-update-freq 5 \
    --inv-update-freq 20 --out "$here/kfac-lr0.03-damping0.3.json"
