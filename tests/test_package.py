"""kfaclab as an installable package: a wheel with its notebook template, a `kfaclab` console
command equal to `python -m kfaclab`, importable away from the checkout."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation: the venv's setuptools builds it, with no download.
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "--disable-pip-version-check", "-w", str(out), str(ROOT)],
                       capture_output=True, text=True, timeout=600, cwd=out)
    assert r.returncode == 0, r.stderr
    [w] = list(out.glob("kfaclab-*-py3-none-any.whl"))
    return w


def _install(python: str, wheel: Path, target: Path):
    r = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-compile",
                        "--disable-pip-version-check", "--target", str(target), str(wheel)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr


def test_the_wheel_holds_the_package_its_template_and_the_console_command(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry = next(n for n in names if n.endswith("entry_points.txt"))
        assert "kfaclab = kfaclab.cli:main" in z.read(entry).decode()
    assert "kfaclab/templates/experiment.ipynb" in names and "kfaclab/cli/__init__.py" in names
    # every subpackage travels, with each of its modules
    source = ROOT
    modules = {str(p.relative_to(source)) for p in (source / "kfaclab").rglob("*.py")}
    assert modules <= names
    assert not any(n.startswith(("tests/", "book/", "runs/")) for n in names)


def test_installed_away_from_the_checkout_it_imports_and_runs(wheel, tmp_path):
    site = tmp_path / "site"
    _install(sys.executable, wheel, site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = subprocess.run([sys.executable, "-c", "import kfaclab, kfaclab.sweep.worker as r; "
                        "print(kfaclab.__file__); print(r.template_path().exists())"],
                       capture_output=True, text=True, env=env, cwd=elsewhere, timeout=300)
    assert r.returncode == 0, r.stderr
    path, template = r.stdout.split()
    assert Path(path).is_relative_to(site) and template == "True"  # the installed copy, not the checkout
    script = site / "bin" / "kfaclab"
    a = subprocess.run([sys.executable, str(script), "sweep", "nope.yaml"], capture_output=True, text=True, env=env,
                       cwd=elsewhere, timeout=300)
    b = subprocess.run([sys.executable, "-m", "kfaclab", "sweep", "nope.yaml"], capture_output=True, text=True,
                       env=env, cwd=elsewhere, timeout=300)
    assert a.returncode == b.returncode == 2 and a.stderr == b.stderr and "no study spec" in a.stderr


def test_the_venvs_kfaclab_command_equals_python_m_kfaclab():
    command = Path(sys.executable).parent / "kfaclab"
    if not command.exists():
        pytest.fail(f"no console command at {command}: install the package (make, or pip install -e .)")
    a = subprocess.run([str(command), "--help"], capture_output=True, text=True, timeout=300)
    b = subprocess.run([sys.executable, "-m", "kfaclab", "--help"], capture_output=True, text=True, timeout=300)
    assert a.returncode == b.returncode == 0
    assert a.stdout.replace("usage: kfaclab", "usage: python -m kfaclab") .split() == b.stdout.split()
    import kfaclab

    assert Path(kfaclab.__file__).resolve().parent == ROOT / "kfaclab"  # editable: this checkout


def test_the_package_installs_under_python_3_12_too(wheel, tmp_path):
    """The GPU machine runs Python 3.12: the same wheel installs and imports there. Needs a 3.12
    interpreter with torch (KFACLAB_PYTHON312, or python3.12 on PATH)."""
    python = os.environ.get("KFACLAB_PYTHON312") or shutil.which("python3.12")
    if not python:
        pytest.skip("no Python 3.12 here (set KFACLAB_PYTHON312 to one with torch)")
    probe = subprocess.run([python, "-c", "import torch"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"{python} has no torch")
    site = tmp_path / "site312"
    _install(python, wheel, site)
    r = subprocess.run([python, "-c", "import sys, kfaclab.train.config as c, kfaclab.optim.kfac; "
                        "print(sys.version_info[:2], kfaclab.train.config.__file__)"],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(site)},
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 0 and "(3, 12)" in r.stdout and str(site) in r.stdout, r.stderr
