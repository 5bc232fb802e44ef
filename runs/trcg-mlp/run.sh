#!/usr/bin/env bash
# TRCG and stochastic TRCG on a small real problem, the reference for issue 4's real-data check,
# with SGD at the same data and a similar number of propagations for comparison.
# Data: CIFAR-10 (JPEG q75 copy, ../shared/data/cifar10-jpeg.tar.gz), a class-stratified subset
# of 5,000 training and 1,000 test images, downsampled to 16x16, no augmentation.
# Model: MLP 768-256-10. Hardware: 2-core CPU.
# TRCG: 20 iterations, full gradient (5,000 images), Hessian on 5% (250 images), defaults
#   (radius 1, eta1 0.8, eta2 1e-4, gamma1 2, gamma2 1.2, <= 250 CG iterations, tolerance 1e-2).
# STRCG: 80 iterations at batch 128 (2 epochs of mini-batches), radius 0.1, otherwise the same.
# SGD: lr 0.03 (the best of {0.01, 0.03, 0.1} in runs/kfac-vs-sgd-mlp), momentum 0.9,
#   constant rate, 34 epochs: about as many propagations as the TRCG run.
# Usage (from the repository root): bash runs/trcg-mlp/run.sh
set -euo pipefail
here=runs/trcg-mlp
common=(--dataset cifar10-jpeg --model mlp:256 --batch-size 128 --train-subset 5000 --test-subset 1000
        --resolution 16 --no-augment --min-evals 10 --device cpu --quiet)
.venv/bin/python -m kfaclab train "${common[@]}" --optimizer trcg --iterations 20 --out "$here/trcg.json"
.venv/bin/python -m kfaclab train "${common[@]}" --optimizer strcg --iterations 80 --radius 0.1 \
    --out "$here/strcg-radius0.1.json"
.venv/bin/python -m kfaclab train "${common[@]}" --optimizer sgd --epochs 34 --lr 0.03 --momentum 0.9 \
    --weight-decay 0 --lr-decay constant --out "$here/sgd-lr0.03-34epochs.json"
