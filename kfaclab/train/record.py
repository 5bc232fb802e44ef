"""The run record: one JSON file per run, its schema, and an atomic writer.

Schema version 1 (documented in book/run-record.md):
  schema_version, kind="kfaclab.run", run_id, status (completed | diverged | failed | interrupted),
  config (RunConfig.to_dict()), resolved (what the config resolved to for this data and batch),
  environment, history (one entry per evaluation), targets (race results), final, optimizer
  (counters), divergence (null or {iteration, reason}), error (null or the error's last lines),
  started_at, finished_at. Optional: adaptive (ABS/ABSA runs and their doubling controls:
  max_batch, options, and one entry per epoch with the eigenvalue measured (null for the
  controls, which measure none), the rule's action and the batch size, learning-rate
  multiplier and adversarial ratio that follow); in history entries, noise (the gradient
  noise scale terms), top_eigenvalue, and for ABS/ABSA runs batch_size and adv_ratio.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import tempfile
from pathlib import Path

from kfaclab.atomic import atomic_file
from kfaclab.errors import UsageError

SCHEMA_VERSION = 1
STATUSES = ("completed", "diverged", "failed", "interrupted")
NUM = (int, float)
OPT_NUM = (int, float, type(None))

SCHEMA = {
    "schema_version": int, "kind": str, "run_id": str, "status": str, "config": dict, "resolved": dict,
    "environment": dict, "history": list, "targets": list, "final": dict, "optimizer": dict,
    "divergence": (dict, type(None)), "error": (str, type(None)), "started_at": str, "finished_at": str,
}
HISTORY_ENTRY = {
    "iteration": int, "epoch": NUM, "examples": int, "seconds": NUM, "propagations": NUM, "lr": OPT_NUM,
    "train_loss": OPT_NUM, "test_loss": NUM, "test_accuracy": NUM,
}
NOISE_ENTRY = {  # optional in a history entry, with RunConfig.noise_scale_batches
    "b_small": int, "b_big": int, "small_sq": NUM, "big_sq": NUM, "grad_sq": NUM, "trace": NUM,
}
ADAPTIVE = {"max_batch": int, "options": dict, "epochs": list}
ADAPTIVE_EPOCH = {
    "epoch": int, "eigenvalue": OPT_NUM, "reference": OPT_NUM, "action": (str, type(None)), "batch_size": int,
    "lr_multiplier": NUM, "adv_ratio": NUM, "iteration": int,
}
TARGET_ENTRY = {
    "test_accuracy": NUM, "train_loss": OPT_NUM, "reached": bool, "iteration": (int, type(None)),
    "epoch": OPT_NUM, "examples": (int, type(None)), "seconds": OPT_NUM, "propagations": OPT_NUM,
}
RESOLVED = {
    "iterations": int, "epochs": NUM, "examples": int, "steps_per_epoch": int, "peak_lr": OPT_NUM,
    "warmup_iterations": int, "evaluation_iterations": list, "train_examples": int, "test_examples": int,
    "input_shape": list, "num_classes": int, "num_parameters": int, "hparams": dict, "device": str,
    "rule_epochs": OPT_NUM, "dataset_source": str,
}


FINAL = {"iteration": int, "epoch": NUM, "examples": int, "seconds": NUM, "eval_seconds": NUM,
         "test_loss": OPT_NUM, "test_accuracy": OPT_NUM}  # None: a run that failed before evaluating
# Ranges a value of a record can take (where a field is present and of its type).
AT_LEAST_ZERO = ("iteration", "epoch", "examples", "seconds", "eval_seconds", "propagations", "test_loss",
                 "train_loss")


def validate_record(rec) -> list[str]:
    """Problems with a record against schema version 1, types and ranges; an empty list means
    valid. Whatever is read back (a truncated file, another JSON document) gets problems, never
    an exception."""
    if not isinstance(rec, dict):
        return [f"not a JSON object but a {type(rec).__name__}"]
    problems = _check(rec, SCHEMA, "record")
    if problems:
        return problems
    if rec["schema_version"] != SCHEMA_VERSION:
        problems.append(f"schema_version {rec['schema_version']} is not {SCHEMA_VERSION}")
    if rec["kind"] != "kfaclab.run":
        problems.append(f"kind {rec['kind']!r} is not 'kfaclab.run'")
    if rec["status"] not in STATUSES:
        problems.append(f"status {rec['status']!r} not in {STATUSES}")
    problems += _check(rec["resolved"], RESOLVED, "resolved")
    for i, h in enumerate(rec["history"]):
        problems += _check(h, HISTORY_ENTRY, f"history[{i}]")
        if "noise" in h:
            problems += _check(h["noise"], NOISE_ENTRY, f"history[{i}].noise")
        if "test_examples" in h:  # sequential evaluation: how much of the test set it read
            problems += _check(h, {"test_examples": int}, f"history[{i}]")
    if "adaptive" in rec:
        problems += _check(rec["adaptive"], ADAPTIVE, "adaptive")
        for i, e in enumerate(rec["adaptive"].get("epochs", [])):
            problems += _check(e, ADAPTIVE_EPOCH, f"adaptive.epochs[{i}]")
    for i, t in enumerate(rec["targets"]):
        problems += _check(t, TARGET_ENTRY, f"targets[{i}]")
        if isinstance(t, dict) and t.get("reached") is True and t.get("iteration") is None:
            problems.append(f"targets[{i}]: reached without an iteration")
    problems += _check(rec["final"], FINAL, "final")
    if problems:
        return problems
    if rec["status"] in ("completed", "diverged") and (not rec["history"] or rec["final"]["test_accuracy"] is None):
        problems.append(f"a {rec['status']} run without evaluations")
    for where, entry in [("final", rec["final"])] + [(f"history[{i}]", h) for i, h in enumerate(rec["history"])]:
        problems += _ranges(entry, where)
    iters = [h.get("iteration") for h in rec["history"]]
    if iters != sorted(iters):
        problems.append("history is not in iteration order")
    if rec["history"] and rec["final"]["iteration"] < rec["history"][-1]["iteration"]:
        problems.append("final.iteration is before the last evaluation")
    return problems + impossible(rec)


def impossible(rec: dict) -> list[str]:
    """What a well-typed record cannot hold (a record edited, corrupted or made by a bug): a number
    that is not finite anywhere in it, a target reached after the run ended or at an iteration it
    never evaluated, a run longer than its budget, and a `final` section that disagrees with the
    last evaluation it reports."""
    out = [f"{where}: {value!r} is not a finite number" for where, value in _non_finite(rec, "record")]
    final, history = rec["final"], rec["history"]
    evaluated = {h["iteration"] for h in history}
    for i, t in enumerate(rec["targets"]):
        it = t.get("iteration")
        if not 0 < t["test_accuracy"] <= 1:
            out.append(f"targets[{i}].test_accuracy: {t['test_accuracy']} is outside (0, 1]")
        if it is None:
            continue
        if it > final["iteration"]:
            out.append(f"targets[{i}]: reached at iteration {it:,}, after the run ended at {final['iteration']:,}")
        elif history and it not in evaluated:
            out.append(f"targets[{i}]: reached at iteration {it:,}, where the run did not evaluate")
    n_test = rec["resolved"].get("test_examples")
    for i, h in enumerate(history):
        seen = h.get("test_examples")
        if isinstance(seen, int) and isinstance(n_test, int) and not 0 < seen <= n_test:
            out.append(f"history[{i}].test_examples: {seen:,} is not within the {n_test:,} test images")
    partial = {h["iteration"] for h in history if isinstance(h.get("test_examples"), int)
               and isinstance(n_test, int) and h["test_examples"] < n_test}
    for i, t in enumerate(rec["targets"]):  # a crossing is decided on the whole test set
        if t.get("iteration") in partial:
            out.append(f"targets[{i}]: reached at iteration {t['iteration']:,}, whose evaluation read only part "
                       "of the test set")
    budget = rec["resolved"].get("iterations")
    if rec["config"].get("batch_schedule", "fixed") == "fixed" and isinstance(budget, int) \
            and final["iteration"] > budget:
        out.append(f"final.iteration {final['iteration']:,} is past the run's budget of {budget:,} iterations")
    if history and final.get("test_accuracy") is not None:
        last = history[-1]
        if final["test_accuracy"] != last["test_accuracy"] or final.get("test_loss") != last["test_loss"]:
            out.append("final: its test accuracy and loss are not those of the last evaluation")
        if "evaluated_at" in final and final["evaluated_at"] != last["iteration"]:
            out.append(f"final.evaluated_at {final['evaluated_at']} is not the last evaluation's iteration "
                       f"{last['iteration']}")
    return out


def _non_finite(value, where):
    """(where, value) of every float in a JSON document that is NaN or infinite."""
    if isinstance(value, float):
        if not math.isfinite(value):
            yield where, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _non_finite(v, f"{where}.{k}" if where != "record" else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _non_finite(v, f"{where}[{i}]")


def _ranges(entry: dict, where: str) -> list[str]:
    out = []
    acc = entry.get("test_accuracy")
    if isinstance(acc, NUM) and not 0.0 <= acc <= 1.0:
        out.append(f"{where}.test_accuracy: {acc} is outside [0, 1]")
    for k in AT_LEAST_ZERO:
        v = entry.get(k)
        if isinstance(v, NUM) and not isinstance(v, bool) and not v >= 0:
            out.append(f"{where}.{k}: {v} is negative")
    return out


def read_record(path: str | os.PathLike):
    """(record, None) for a valid run record; (None, problem) for one that cannot be read,
    is not JSON, or fails `validate_record` (the problem in one line); (None, None) when there
    is no file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError) as e:
        return None, f"cannot be read ({type(e).__name__}: {e})"
    try:
        data = json.loads(text)
    except ValueError as e:
        return None, f"is not valid JSON ({e}; truncated?)"
    problems = validate_record(data)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        return None, f"is not a valid run record: {problems[0]}{more}"
    return data, None


def _check(d: dict, spec: dict, where: str) -> list[str]:
    out = [f"{where}: missing {k}" for k in spec if k not in d]
    for k, t in spec.items():
        if k in d and (not isinstance(d[k], t) or (isinstance(d[k], bool) and bool not in _as_tuple(t))):
            out.append(f"{where}.{k}: {type(d[k]).__name__} is not {t}")
    return out


def _as_tuple(t):
    return t if isinstance(t, tuple) else (t,)


def write_atomic(path: str | os.PathLike, record: dict) -> Path:
    """Write JSON so that a reader (or a resuming sweep) sees the old file or the whole new
    one, never a torn one."""
    return write_bytes_atomic(path, (json.dumps(record, indent=1, allow_nan=False) + "\n").encode())


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write to a temp file in the same folder, fsync, then rename over `path` (atomic_file)."""
    with atomic_file(path) as f:
        f.write(data)
    return Path(path)


def check_writable(path: str | os.PathLike, what: str = "the record", fix: str = "choose another --out") -> Path:
    """Fail in one line before any work if `path` (a file to be written) cannot be: its folder
    cannot be made, is not a folder, or refuses a file. Probes with a temp file it removes."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{what} would be written to {path}, which is a folder; give a file name, e.g. "
                         f"{path / 'run.json'}")
    check_writable_folder(path.parent, what, fix)
    return path


def record_size_bound(evaluations: int) -> int:
    """Bytes a run record with `evaluations` history entries takes at most (indented JSON; a
    history entry with the noise-scale terms is under 700 bytes), with room for its notebook,
    which holds the record's figures again: what `check_room` probes before a run trains."""
    return 3 * (16_384 + 700 * max(1, evaluations)) + 65_536


def check_room(path: str | os.PathLike, nbytes: int, what: str = "the record",
               fix: str = "free space there, or choose another --out") -> None:
    """Fail in one line, before any training, if `nbytes` cannot be written next to `path` (a
    full disk or quota): a probe file of that size is written, synced and removed. A 0-byte
    probe would pass on a full disk and the finished run would then have nowhere to go."""
    folder = Path(path).parent
    fd, probe = None, None
    try:
        fd, probe = tempfile.mkstemp(prefix=".kfaclab-room-probe-", dir=folder)
        block = b"\0" * min(nbytes, 1 << 20)
        left = nbytes
        while left > 0:
            left -= os.write(fd, block[:left])
        os.fsync(fd)
    except OSError as e:
        raise UsageError(f"no room for {what} in {folder} ({e.strerror or type(e).__name__}: "
                         f"{nbytes:,} bytes needed); {fix}") from None
    finally:
        if fd is not None:
            os.close(fd)
        if probe is not None:
            try:
                os.unlink(probe)
            except OSError:
                pass


class RecordNotSaved(UsageError):
    """The run finished but its record could not be written where asked; it was saved elsewhere
    (the message says where), or printed as a last resort."""


RESCUE_ENV = "KFACLAB_RESCUE_DIR"


def save_record(path: str | os.PathLike, record: dict, retries: int = 1, wait: float = 1.0) -> Path:
    """Write a finished run's record atomically to `path`; if that fails (a full disk, a folder
    that went away), try again after `wait` seconds, then save it in the first rescue folder that
    takes it ($KFACLAB_RESCUE_DIR, ~/.cache/kfaclab/rescued, the system's temp folder) and raise
    RecordNotSaved naming where it went; if none takes it, the record is printed to stderr as one
    line of JSON, so that the run's result survives in the log."""
    import sys
    import time

    path = Path(path)
    error = None
    for attempt in range(retries + 1):
        try:
            return write_atomic(path, record)
        except OSError as e:
            error = e
            if attempt < retries:
                time.sleep(wait)
    why = f"{error.strerror or type(error).__name__}" if isinstance(error, OSError) else str(error)
    candidates = [os.environ.get(RESCUE_ENV), Path.home() / ".cache" / "kfaclab" / "rescued",
                  Path(tempfile.gettempdir()) / "kfaclab-rescued"]
    for folder in (Path(c) for c in candidates if c):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            where = write_atomic(folder / path.name, record)
        except OSError:
            continue
        raise RecordNotSaved(f"could not write the record to {path} ({why}); the finished run's record is saved "
                             f"at {where}: move it there once there is room")
    print(json.dumps(record, allow_nan=False), file=sys.stderr)
    raise RecordNotSaved(f"could not write the record to {path} ({why}) nor to any rescue folder; the record is "
                         "the line of JSON above, on stderr")


def check_writable_folder(folder: str | os.PathLike, what: str, fix: str) -> Path:
    """The folder exists (or can be made) and accepts a new file."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"cannot write {what} in {folder}: it is a file, not a folder; {fix}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".kfaclab-write-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"cannot write {what} in {folder} ({e.strerror or type(e).__name__}); {fix}") from None
    return folder


def environment(device) -> dict:
    """Versions and hardware, so a number can be traced to what produced it."""
    import numpy
    import torch
    import torchvision

    import kfaclab

    env = {
        "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "numpy": numpy.__version__, "kfaclab": kfaclab.__version__, "platform": platform.platform(),
        "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "device": str(device), "gpu": None, "git_commit": _git_commit(), "rules": rules_in_force(),
    }
    if str(device).startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        # fp32 convolutions on Ampere and later GPUs run in TF32 unless switched off (torch's
        # default for cuDNN); matrix products (K-FAC's factors) do not by default.
        env["tf32"] = {"cudnn": bool(torch.backends.cudnn.allow_tf32),
                       "matmul": bool(torch.backends.cuda.matmul.allow_tf32)}
    return env


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# Outside a checkout (kfaclab installed from a wheel on a borrowed GPU machine, the repository's
# files copied there without .git), the checkout's identity comes from the environment:
# scripts/gpu-harvest.sh sets these from the provenance scripts/gpu-wheels.sh stamps beside the
# wheels, so records made there still name their commit and the rules in force.
CHECKOUT_ENV = "KFACLAB_CHECKOUT"  # the repository's root (its book/verdicts.md is read there)
COMMIT_ENV = "KFACLAB_GIT_COMMIT"  # HEAD of the checkout the files came from
RULES_COMMIT_ENV = "KFACLAB_RULES_COMMIT"  # the last commit that changed book/verdicts.md there


def _checkout_root() -> Path:
    """The repository this run came from: the package's own checkout, else $KFACLAB_CHECKOUT."""
    root = Path(__file__).resolve().parents[2]
    if (root / "book" / "verdicts.md").is_file() or not os.environ.get(CHECKOUT_ENV):
        return root
    return Path(os.environ[CHECKOUT_ENV])


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def rules_in_force() -> dict:
    """The verdict rules (book/verdicts.md) of the checkout this run came from: the highest version
    the page states, the sha256 of its text and the last commit that changed it (from git, else
    $KFACLAB_RULES_COMMIT; None when neither knows), so that every record names the rules that
    were in force when it was made."""
    import hashlib
    import re

    root = _checkout_root()
    page = root / "book" / "verdicts.md"
    try:
        text = page.read_text()
    except OSError:
        return {"version": None, "sha256": None, "commit": None}
    versions = [int(v) for v in re.findall(r"^## Version (\d+)", text, flags=re.M)]
    commit = _git(root, "log", "-1", "--format=%H", "--", "book/verdicts.md") or os.environ.get(RULES_COMMIT_ENV)
    return {"version": max(versions, default=1), "sha256": hashlib.sha256(text.encode()).hexdigest(),
            "commit": commit or None}


def _git_commit() -> str | None:
    return _git(_checkout_root(), "rev-parse", "HEAD") or os.environ.get(COMMIT_ENV) or None

