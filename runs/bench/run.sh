#!/usr/bin/env bash
# Step-time benchmarks quoted in the book: K-FAC's cost per step against SGD's, on this
# project's CPU (record the hardware: the JSON has it). K-FAC at its defaults: factors every
# 10 steps, eigendecompositions every 100, MC Fisher; the amortized time is the mean over 100
# consecutive steps, so it includes both.
# Data: CIFAR-10 (JPEG q75 copy); batches are pre-made on the device (the loader is timed apart).
# Usage (from the repository root, on an otherwise idle machine): bash runs/bench/run.sh
set -euo pipefail
here=runs/bench
.venv/bin/python -m kfaclab bench --dataset cifar10-jpeg --model resnet20 --batch-size 128 \
    --optimizers sgd,kfac --device cpu --json "$here/resnet20-b128-cpu.json"
.venv/bin/python -m kfaclab bench --dataset cifar10-jpeg --resolution 16 --model mlp:256 --batch-size 512 \
    --no-augment --optimizers sgd,kfac --device cpu --json "$here/mlp-b512-cpu.json"
# Data-parallel, two CPU processes with gloo, one thread each: SGD and K-FAC per strategy
# (decompositions replicated, distributed by cost, distributed with stale inverses).
.venv/bin/python -m torch.distributed.run --nproc_per_node=2 --master_addr=127.0.0.1 --master_port=29571 \
    -m kfaclab bench --dataset cifar10-jpeg --resolution 16 --model mlp:256 --batch-size 512 --no-augment \
    --optimizers sgd,kfac --device cpu --threads 1 --json "$here/distributed-mlp-b512-2cpu.json"
.venv/bin/python -m torch.distributed.run --nproc_per_node=2 --master_addr=127.0.0.1 --master_port=29572 \
    -m kfaclab bench --dataset cifar10-jpeg --model resnet20 --batch-size 128 \
    --optimizers sgd,kfac --device cpu --threads 1 --json "$here/distributed-resnet20-b128-2cpu.json"
