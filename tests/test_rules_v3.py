"""Rules version 3 (book/verdicts.md): what they measure, checked by hand, and that every record
they judge came from a checkout that already held them."""

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest

from kfaclab.results.claims import CONTRADICTED, NOT_RESOLVED, REPRODUCED
from kfaclab.results.intervals import (
    interval,
    monte_carlo_error,
    pooled_mean_replicates,
    pooled_step_replicates,
)
from kfaclab.results.verdicts_v3 import decide
from kfaclab.results.width import widths
from kfaclab.train.record import rules_in_force

ROOT = Path(__file__).resolve().parents[1]
# The studies judged under version 3, and the version that judges them.
JUDGED = {"miniature3": 3, "miniature3-epochs": 3, "miniature3-iterations": 3,
          "resnet-cpu": 3, "resnet-cpu-epochs": 3, "resnet-cpu-iterations": 3,
          "gpu": 3, "gpu-epochs": 3, "gpu-iterations": 3}
# The section that extends version 3 to a set, for the sets added after version 3 itself.
SECTIONS = {"resnet-cpu": "### Version 3 on the ResNet study", "gpu": "### Version 3 on the gpu study"}


def _git(*args) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def _rules_commit(version: int, heading: str | None = None) -> str:
    """The first commit whose book/verdicts.md states `## Version <version>` (or `heading`)."""
    heading = heading or f"## Version {version}"
    out = _git("log", "--reverse", "--format=%H", "-S", heading, "--", "book/verdicts.md")
    assert out, f"no commit adds {heading!r} to the rules"
    return out.splitlines()[0]


def _section(study: str) -> str | None:
    return next((h for name, h in SECTIONS.items() if study == name or study.startswith(name + "-")), None)


@pytest.mark.parametrize("study", sorted(JUDGED))
def test_every_judged_record_came_after_its_rules_and_their_code(study):
    try:
        _git("rev-parse", "HEAD")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    if _git("rev-parse", "--is-shallow-repository") == "true":
        pytest.skip("a shallow clone has no history to check against")
    rules = _rules_commit(JUDGED[study], _section(study))
    for path in ("kfaclab/results/verdicts_v3.py", "kfaclab/results/intervals.py", "kfaclab/results/width.py",
                 "kfaclab/sweep/bracket.py", f"runs/{study}/study.yaml"):
        _git("cat-file", "-e", f"{rules}:{path}")  # the code and the study's spec were committed with the rules
    if _section(study):  # the set's own code too: the judged set names it, the evaluation it uses
        assert study in _git("show", f"{rules}:kfaclab/results/judged_v3.py")
        _git("cat-file", "-e", f"{rules}:kfaclab/train/sequential_eval.py")
    rules_time = int(_git("show", "-s", "--format=%ct", rules))
    records = [p for p in (ROOT / "runs" / study).glob("*.json") if not p.name.endswith(".failed.json")]
    for p in records:
        rec = json.loads(p.read_text())
        env = rec["environment"]
        assert env["rules"]["version"] == JUDGED[study], f"{p.name}: made under rules {env['rules']['version']}"
        commit = env["git_commit"]
        assert commit, f"{p.name}: no commit recorded"
        ancestor = subprocess.run(["git", "merge-base", "--is-ancestor", rules, commit], cwd=ROOT).returncode
        assert ancestor == 0, f"{p.name}: made at {commit[:10]}, which does not contain the rules ({rules[:10]})"
        from datetime import datetime

        started = datetime.fromisoformat(rec["started_at"]).timestamp()
        assert started >= rules_time, f"{p.name}: started before the rules were committed"


def test_records_name_the_rules_in_force():
    r = rules_in_force()
    assert r["version"] >= 3 and len(r["sha256"]) == 64


def test_width_by_hand():
    """One row of four learning rates (x = 0, 1, 2, 3), accuracies 0.50, 0.545, 0.55, 0.52: the best is
    0.55 at x = 2, the region is accuracy >= 0.54: left end between x = 0 and 1 at (0.545 - 0.54) /
    (0.545 - 0.50) = 1/9 of the way back from x = 1, right end between 2 and 3 at (0.55 - 0.54) /
    (0.55 - 0.52) = 1/3: width (2 + 1/3) - (1 - 1/9)."""
    lr = np.array([1.0, 2.0, 4.0, 8.0])
    w, lo, hi = widths(lr, np.zeros(4), np.log2(lr), np.array([[0.50, 0.545, 0.55, 0.52]]))
    assert w[0] == pytest.approx((2 + 1 / 3) - (1 - 1 / 9))
    assert not lo[0] and not hi[0]
    w, lo, hi = widths(lr, np.zeros(4), np.log2(lr), np.array([[0.545, 0.55, 0.55, 0.52]]))
    assert lo[0] and not hi[0]  # the region reaches the lowest rate: censored there


def test_an_inert_learning_rate_adds_no_width():
    """K-FAC under a binding clip: four nominal rates, one effective rate, equal accuracies: the
    width in effective rate is 0 (and censored on both sides), not the whole axis."""
    lr = np.array([0.003, 0.01, 0.03, 0.1])
    x = np.full(4, math.log2(0.002))
    w, lo, hi = widths(lr, np.zeros(4), x, np.array([[0.5, 0.5, 0.5, 0.5]]))
    assert w[0] == 0 and lo[0] and hi[0]
    w_nominal, _, _ = widths(lr, np.zeros(4), np.log2(lr), np.array([[0.5, 0.5, 0.5, 0.5]]))
    assert w_nominal[0] == pytest.approx(math.log2(0.1 / 0.003))


def test_the_width_follows_the_best_configurations_row():
    lr = np.array([1.0, 2.0, 4.0, 1.0, 2.0, 4.0])
    other = np.array([0, 0, 0, 1, 1, 1.0])
    acc = np.array([[0.50, 0.50, 0.50, 0.40, 0.60, 0.40]])  # best in row 1, narrow there
    w, lo, hi = widths(lr, other, np.log2(lr), acc)
    assert w[0] == pytest.approx(2 * 0.05)  # 0.01 of a 0.2 drop per unit of log2 on each side


def test_decide_does_not_resolve_within_the_monte_carlo_error():
    assert decide((0.2, 0.5), 0.01, below=0.1, above=0.1) == REPRODUCED
    assert decide((0.105, 0.5), 0.01, below=0.1, above=0.1) == NOT_RESOLVED
    assert decide((-0.5, -0.2), 0.01, below=0.1, above=0.1) == CONTRADICTED
    assert decide((None, None), 0.01, below=0.1, above=0.1) == NOT_RESOLVED


def test_hull_interval_and_monte_carlo_error():
    rng = np.random.default_rng(0)
    samples = 10 + rng.standard_normal(1000)
    lo, hi = interval(9.0, samples, "hull")
    q5, q95 = np.quantile(samples, [0.05, 0.95])
    assert lo == pytest.approx(min(q5, 18 - q95)) and hi == pytest.approx(max(q95, 18 - q5))
    mc = monte_carlo_error(9.0, samples)
    assert 0.01 < mc < 0.3  # about sd(quantile of 100 normals) / sqrt(10)


def test_pooled_replicates_keep_the_grid_and_pool_the_noise():
    rng = np.random.default_rng(1)
    acc = np.array([[0.50, 0.52, 0.51], [0.40, 0.40, 0.40], [0.30, np.nan, 0.34]])
    reps = pooled_mean_replicates(acc, rng, 20_000)
    resid = np.concatenate([[-0.01, 0.01, 0.0], [0, 0, 0], [-0.02, 0.02]])
    sd = math.sqrt(np.sum(resid ** 2) / (2 + 2 + 1))
    assert reps.mean(axis=0) == pytest.approx(np.nanmean(acc, axis=1), abs=5e-4)
    assert reps.std(axis=0) == pytest.approx(sd / np.sqrt([3, 3, 2]), rel=0.03)
    cross = np.array([[100.0, 120.0, 110.0], [np.inf, np.inf, np.inf], [50.0, np.inf, np.inf]])
    steps = pooled_step_replicates(cross, rng, 5000)
    # The third configuration has two of three seeds never crossing: its median is never finite,
    # so the minimum comes from the first configuration's centre, 110, with pooled spread.
    assert np.nanmedian(steps) == pytest.approx(110, rel=0.05)
    assert np.isfinite(steps).all()


def _identity_outside_a_checkout(tmp_path, env_extra: dict) -> dict:
    """rules_in_force() and the recorded commit of a kfaclab imported from a copy of the package
    with no checkout around it (as installed from its wheel on a borrowed GPU machine)."""
    import os
    import shutil
    import sys

    site = tmp_path / "site"
    if not site.exists():
        shutil.copytree(ROOT / "kfaclab", site / "kfaclab", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KFACLAB_")}
    env.update(PYTHONPATH=str(site), GIT_CEILING_DIRECTORIES=str(tmp_path), **env_extra)
    code = ("import json; from kfaclab.train.record import rules_in_force, _git_commit; "
            "print(json.dumps({'rules': rules_in_force(), 'commit': _git_commit()}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


def test_records_made_from_a_wheel_name_the_checkout_the_harvest_stamped(tmp_path):
    """On the GPU machine kfaclab runs from its wheel and the repository's files arrive without
    .git: scripts/gpu-harvest.sh exports the checkout's folder and the commits gpu-wheels.sh
    stamped, and records name them; without them a record says it does not know (None), never
    another checkout's rules."""
    import shutil

    checkout = tmp_path / "checkout"
    (checkout / "book").mkdir(parents=True)
    shutil.copyfile(ROOT / "book" / "verdicts.md", checkout / "book" / "verdicts.md")
    stamped = _identity_outside_a_checkout(tmp_path, {"KFACLAB_CHECKOUT": str(checkout),
                                                      "KFACLAB_GIT_COMMIT": "a" * 40,
                                                      "KFACLAB_RULES_COMMIT": "b" * 40})
    here = rules_in_force()
    assert stamped["rules"] == {"version": here["version"], "sha256": here["sha256"], "commit": "b" * 40}
    assert stamped["commit"] == "a" * 40
    bare = _identity_outside_a_checkout(tmp_path, {})
    assert bare == {"rules": {"version": None, "sha256": None, "commit": None}, "commit": None}
