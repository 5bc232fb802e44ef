#!/usr/bin/env bash
# Step-time benchmarks quoted in the book: K-FAC's cost per step against SGD's, on this
# project's CPU (the JSON records the hardware). K-FAC at its defaults: factors every 10 steps,
# decompositions every 100, MC Fisher, eigen; variants in brackets. The amortized time is the
# mean over 2 blocks of 100 consecutive steps per optimizer, the optimizers' blocks interleaved
# (so both decompositions and all factor updates are inside); each K-FAC variant's step is
# broken into phases in a profiled pass of its own.
# Data: CIFAR-10 (JPEG q75 copy); batches are pre-made on the device (the loader is timed apart).
#
# Usage (from the repository root, on an otherwise idle machine):
#   bash runs/bench/run.sh           # the current code: runs/bench/*.json
#   bash runs/bench/run.sh before    # the code before issue 20 (commit a182562, checked out
#                                    # beside the repository): runs/bench/before/*.json
#   bash runs/bench/run.sh fast-path # the resnet-cpu study's model in float32 and on the CPU fast
#                                    # path (bf16 autocast, channels-last): runs/bench/resnet8-*.json
set -euo pipefail
here=$PWD/runs/bench
py=$PWD/.venv/bin/python
out=$here
amortize=(--amortize 100)  # x 2 interleaved blocks (the default --amortize-rounds)
if [[ "${1:-}" == "before" ]]; then
    amortize=(--amortize 200)  # the bench of before has one block per optimizer
    tree=$(dirname "$PWD")/kfaclab-before
    [[ -d "$tree" ]] || git worktree add "$tree" a182562
    out=$here/before
    mkdir -p "$out"
    cd "$tree"  # python -m kfaclab then imports the old code (the working directory comes first)
fi
resnet() {  # batch size
    "$py" -m kfaclab bench --dataset cifar10-jpeg --model resnet20 --batch-size "$1" \
        --optimizers "sgd,kfac,kfac[fisher_type=empirical]" --device cpu "${amortize[@]}" \
        --steps 2 --rounds 1 --json "$out/resnet20-b$1-cpu.json"
}
# The wide MLP of issue 20: 3072-512-512-10 on 32x32 images, batch 128, eigen and inverse, with
# the low-rank path for wide layers (the default) and without it (the dense path of before).
mlp_variants="sgd,kfac,kfac[inverse_method=inverse],kfac[fisher_type=empirical;inverse_method=inverse]"
mlp_variants+=",kfac[low_rank=false],kfac[low_rank=false;inverse_method=inverse]"
if [[ "${1:-}" == "before" ]]; then
    resnet 128
    "$py" -m kfaclab bench --dataset cifar10-jpeg --model mlp:512,512 --batch-size 128 --no-augment \
        --optimizers "$mlp_variants" --device cpu "${amortize[@]}" --steps 2 --rounds 1 \
        --json "$out/mlp3072-b128-cpu.json"
    exit 0
fi
# The resnet-cpu study's model (issue 29): ResNet-8 on 16x16 images at two of its batch sizes, SGD
# and K-FAC (at the defaults above; the study refreshes more often in short runs), each in float32
# and on the fast path beside it.
fast_path() {
    for b in 128 1024; do
        "$py" -m kfaclab bench --dataset cifar10-jpeg --resolution 16 --model resnet8 --batch-size "$b" \
            --optimizers sgd,kfac --fast-path --device cpu \
            "${amortize[@]}" --steps 2 --rounds 1 --json "$out/resnet8-16px-b$b-cpu.json"
    done
}
if [[ "${1:-}" == "fast-path" ]]; then
    fast_path
    exit 0
fi
resnet 128
resnet 512
fast_path
"$py" -m kfaclab bench --dataset cifar10-jpeg --model mlp:512,512 --batch-size 128 --no-augment \
    --optimizers "$mlp_variants" --device cpu "${amortize[@]}" --steps 2 --rounds 1 \
    --json "$out/mlp3072-b128-cpu.json"
# The cpu study's model: MLP 768-256-10 on 16x16 images.
"$py" -m kfaclab bench --dataset cifar10-jpeg --resolution 16 --model mlp:256 --batch-size 512 \
    --no-augment --optimizers sgd,kfac --device cpu --json "$out/mlp-b512-cpu.json"
# Data-parallel, two CPU processes with gloo, one thread each: SGD and K-FAC per strategy
# (decompositions replicated, distributed by cost, distributed with stale inverses).
"$py" -m torch.distributed.run --nproc_per_node=2 --master_addr=127.0.0.1 --master_port=29571 \
    -m kfaclab bench --dataset cifar10-jpeg --resolution 16 --model mlp:256 --batch-size 512 --no-augment \
    --optimizers sgd,kfac --device cpu --threads 1 --json "$out/distributed-mlp-b512-2cpu.json"
"$py" -m torch.distributed.run --nproc_per_node=2 --master_addr=127.0.0.1 --master_port=29572 \
    -m kfaclab bench --dataset cifar10-jpeg --model resnet20 --batch-size 128 \
    --optimizers sgd,kfac --device cpu --threads 1 --json "$out/distributed-resnet20-b128-2cpu.json"
