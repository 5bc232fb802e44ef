"""Where the time goes on a device: step-time benches and measured throughput of runs sharing a GPU."""

from __future__ import annotations

import numpy as np
import pandas as pd
from IPython.display import Markdown

from kfaclab.report.study import name


def device_bench_view(benches: list[dict], cpu: pd.DataFrame):
    """The harvest's amortized steps on the GPU (kfaclab.results.device_bench.step_table), each
    optimizer's ratio to SGD beside the CPU bench's for the same model, batch and optimizer
    (`cpu`: columns model, batch size, optimizer, x SGD); a sentence while there is none."""
    from kfaclab.results.device_bench import step_table

    steps = step_table(benches)
    if not len(steps):
        return Markdown("No GPU bench has been merged yet: the first GPU window's harvest writes it to "
                        "`runs/gpu/bench/`, and this table shows it from then on. Until then every ratio in this "
                        "chapter is the CPU's, where a step is compute-bound; on a GPU a ResNet-20 step at small "
                        "batches is bound by kernel launches instead, so K-FAC's extra kernels may cost relatively "
                        "more there.")
    cpu = cpu.rename(columns={"x SGD": "x SGD on the CPU"})[["model", "batch size", "optimizer", "x SGD on the CPU"]]
    shown = steps[steps["optimizer"] != "sgd"].merge(cpu, on=["model", "batch size", "optimizer"], how="left")
    sgd = steps[steps["optimizer"] == "sgd"].set_index(["study", "hardware", "batch size"])["ms per step"]
    shown["SGD ms per step"] = [sgd.get(k, np.nan) for k in zip(shown["study"], shown["hardware"], shown["batch size"])]
    table = shown.set_index(["study", "hardware", "batch size", "optimizer"])[
        ["SGD ms per step", "ms per step", "x SGD", "x SGD on the CPU"]]
    return table.style.format("{:.2f}", na_rep="not benched").set_caption(
        "Amortized step on the harvest's device alone, and its ratio to SGD's, beside the CPU bench's ratio for the "
        "same model and batch")


def throughput_view(benches: list[dict], assumed: dict | None = None):
    """The measured throughput of runs sharing a device; while there is none, the throughput
    the gpu spec assumes (`assumed`: its `throughput` section) and that it is an assumption."""
    from kfaclab.results.device_bench import throughput_table

    measured = throughput_table(benches)
    if len(measured):
        return measured.set_index(["study", "hardware", "runs sharing", "optimizers"]).style.format(
            {"epochs per second": "{:.2f}", "examples per second": "{:,.0f}",
             "slowdown per run": "{:.2f}"}).set_caption(
            "Training throughput of runs sharing one device: all of them together, and how much slower each trains "
            "than alone")
    text = "Not measured yet: no GPU window has run the `gpu` study."
    if assumed:
        text += (" Its spec plans with an assumed " + ", ".join(
            f"{v:g} epochs per second for {name(k)}" for k, v in assumed["epochs_per_second"].items())
            + f", with {assumed['runs_sharing']} runs sharing the GPU; the first harvest's measurement replaces the "
            "assumption in its time estimates and in this table.")
    return Markdown(text)
