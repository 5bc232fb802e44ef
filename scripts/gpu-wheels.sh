#!/usr/bin/env bash
# The Python packages the GPU window needs beyond the GPU machine's image, as wheels in .whl/
# (git-ignored; it travels with `carry: [".whl", ...]`). Run here, in the repository root, after
# `make` (the versions are the ones this checkout's .venv tests with).
#
# The image (Python 3.12, torch 2.11, torchvision 0.26, numpy, pandas, pyyaml, pillow, tqdm,
# requests, aiohttp, jinja2, narwhals, attrs, click, psutil, pygments, ...: see the device
# tool's KINDS.md) lacks the notebook stack that executes each run (papermill, nbclient,
# ipykernel and their dependencies) and altair (the run notebook's chart). Wheels of packages
# the image already has are left out: two versions of one package stop the install there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
test -x "$PY" || { echo "gpu-wheels: run 'make test' (or make book) first: it creates .venv" >&2; exit 2; }
# What the notebooks of a run import, and what papermill needs to execute them.
TOP="papermill nbclient nbformat jupyter_client jupyter_core ipykernel ipython traitlets pyzmq tornado comm
debugpy matplotlib-inline nest-asyncio2 jedi parso prompt_toolkit wcwidth decorator pexpect ptyprocess stack-data
executing asttokens pure-eval ipython-pygments-lexers fastjsonschema jsonschema jsonschema-specifications
referencing rpds-py entrypoints tenacity ansicolors altair platformdirs"
# Imported behind try/except by ipykernel (the debugger) and IPython (completion): left out, as
# they are a third of the wheels' size and the working tree that travels holds 64 MiB.
OPTIONAL="debugpy jedi"
# Present on the image (KINDS.md, "Python packages already there"): never carried.
IMAGE="numpy pandas pyyaml pillow tqdm torch torchvision requests urllib3 idna certifi charset-normalizer aiohttp
aiosignal aiohappyeyeballs frozenlist multidict yarl propcache attrs click jinja2 markupsafe narwhals packaging
python-dateutil six typing-extensions pygments psutil filelock fsspec sympy networkx mpmath setuptools wheel pip
pytest pluggy iniconfig"
norm() { tr 'A-Z_.' 'a-z--' <<<"$1"; }
pins=()
for name in $TOP; do
    v=$("$PY" -m pip show "$name" 2>/dev/null | awk '/^Version:/ {print $2}') || true
    if [ -n "$v" ]; then pins+=("$name==$v"); fi
done
rm -rf .whl && mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "${pins[@]}"
for w in .whl/*.whl; do
    pkg=$(norm "$(basename "$w" | cut -d- -f1)")
    for skip in $IMAGE $OPTIONAL; do
        if [ "$pkg" = "$(norm "$skip")" ]; then rm -f "$w"; fi
    done
done
# kfaclab itself, as the GPU machine installs it (pure Python: one wheel for 3.11 and 3.12).
"$PY" -m pip wheel -q --no-deps --disable-pip-version-check -w .whl . >/dev/null
# The checkout's identity, for the records made there (no .git travels): the commit, and the last
# commit of the verdict rules. Only a committed tree can be named by its commit, so the code, the
# rules and the specs must have no uncommitted change.
if ! git diff --quiet HEAD -- kfaclab book/verdicts.md runs scripts/gpu-harvest.sh \
        || [ -n "$(git ls-files --others --exclude-standard -- kfaclab)" ]; then
    echo "gpu-wheels: kfaclab/, book/verdicts.md or runs/ has uncommitted changes; commit them first:" \
         "the records made on the GPU name this checkout's commit" >&2
    exit 2
fi
printf 'KFACLAB_GIT_COMMIT=%s\nKFACLAB_RULES_COMMIT=%s\n' "$(git rev-parse HEAD)" \
    "$(git log -1 --format=%H -- book/verdicts.md)" > .whl/PROVENANCE
echo "gpu-wheels: $(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1) in .whl/"
# Every requirement of every wheel must be a wheel here or a package of the image.
"$PY" - "$IMAGE $OPTIONAL" <<'PYEOF'
import sys, zipfile, pathlib, re
from packaging.requirements import Requirement
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
have = {norm(p.name.split("-")[0]) for p in pathlib.Path(".whl").glob("*.whl")} | {norm(n) for n in sys.argv[1].split()}
env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux", "platform_system": "Linux",
       "os_name": "posix", "platform_machine": "x86_64", "implementation_name": "cpython",
       "platform_python_implementation": "CPython", "extra": ""}
missing = set()
for w in pathlib.Path(".whl").glob("*.whl"):
    with zipfile.ZipFile(w) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        for line in z.read(meta).decode().splitlines():
            if line.startswith("Requires-Dist:"):
                req = Requirement(line.split(":", 1)[1].strip())
                if (req.marker is None or req.marker.evaluate(env)) and norm(req.name) not in have:
                    missing.add(f"{req.name} (for {w.name})")
if missing:
    sys.exit("gpu-wheels: requirements neither carried nor on the image: " + ", ".join(sorted(missing)))
print("gpu-wheels: every requirement is carried or on the image")
PYEOF
