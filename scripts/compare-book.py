#!/usr/bin/env python
"""Build the book at two commits on the same records and diff every computed output.

A refactor must not change what a reader sees. This script checks that by construction rather
than by eye: it checks out each commit in a temporary git worktree, gives both the *same* `runs/`
(the records committed at the first commit, so a study running in the background cannot make
the two builds differ), builds the book in each with that worktree's own `kfaclab` first on the
path, and compares

- every output of every executed chapter (`_build/jupyter_execute/book/*.ipynb`): text, HTML
  tables, Markdown, and the Vega-Lite specs of the charts (data included), and
- every CSV table the book ships (`_static/data/*.csv`).

Only what is volatile by nature is normalised away: the random element ids that Altair, pandas'
Styler and kfaclab's own chart renderer give each element, object addresses, the worktree's own
path, and the wall-clock seconds of the one run the book trains while it builds (the run-record
chapter: its record's `seconds` fields and its table's `seconds` column). Everything else must
match exactly.

    python scripts/compare-book.py BEFORE [AFTER]     AFTER defaults to the working tree's HEAD
    python scripts/compare-book.py --outputs DIR_A DIR_B   compare two finished builds

Exit 0 when the books agree, 1 with a list of differences when they do not, 2 on bad input.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(tempfile.gettempdir()) / "kfaclab-compare-book"

# What differs between two builds of the same book for reasons that are not the book's content.
VOLATILE = (
    (re.compile(r"altair-viz-[0-9a-f]+"), "altair-viz-ID"),  # Altair's random element id
    (re.compile(r"kfaclab-chart-[0-9a-f]{12}"), "kfaclab-chart-ID"),  # plots.vega's random element id
    (re.compile(r"\bT_[0-9a-f]{5}(?=[_\"])"), "T_ID"),  # a pandas Styler's random table id
    (re.compile(r"\bview_[0-9]+\b"), "view_N"),  # Vega's per-process view counter
    (re.compile(r"0x[0-9a-f]{6,}"), "0xADDR"),  # object addresses in reprs
)


# Wall-clock seconds measured while the book builds (the run-record chapter trains a run).
CLOCK_FIELDS = re.compile(r'("(?:eval_)?seconds": )-?[0-9.]+(?:e-?[0-9]+)?')
CLOCK_COLUMN = "seconds"


def _mask_clock_columns(html: str) -> str:
    """In each HTML table, the cells of a column headed exactly `seconds` become S."""
    def table(match):
        text = match.group(0)
        head = re.search(r"<thead>(.*?)</thead>", text, re.S)
        if not head:
            return text
        headers = [re.sub(r"<[^>]+>", "", h).strip() for h in re.findall(r"<th[^>]*>(.*?)</th>", head.group(1), re.S)]
        if CLOCK_COLUMN not in headers:
            return text
        column = headers.index(CLOCK_COLUMN)

        def row(m):
            cells = re.findall(r"<t[hd][^>]*>.*?</t[hd]>", m.group(0), re.S)
            if len(cells) != len(headers):
                return m.group(0)
            cells[column] = re.sub(r">.*?<", ">S<", cells[column], count=1, flags=re.S)
            return "<tr>" + "".join(cells) + "</tr>"

        body = re.sub(r"<tr>.*?</tr>", row, text.split("</thead>", 1)[1], flags=re.S)
        return text.split("</thead>", 1)[0] + "</thead>" + body
    return re.sub(r"<table.*?</table>", table, html, flags=re.S)


def normalise(text: str, root: str | None = None) -> str:
    if root:
        text = text.replace(root, "<ROOT>")
    for pattern, replacement in VOLATILE:
        text = pattern.sub(replacement, text)
    text = CLOCK_FIELDS.sub(r"\1S", text)
    return _mask_clock_columns(text)


def _text(value) -> str:
    if isinstance(value, list):
        return "".join(value)
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, indent=1)


def notebook_outputs(path: Path, root: str | None = None) -> list[str]:
    """Each output of each code cell as one normalised string, in order, labelled by cell."""
    nb = json.loads(path.read_text())
    items = []
    for index, cell in enumerate(nb["cells"]):
        if cell.get("cell_type") != "code":
            continue
        for output in cell.get("outputs", []):
            kind = output["output_type"]
            if kind == "stream":
                items.append(f"[cell {index} {output['name']}]\n" + normalise(_text(output["text"]), root))
            elif kind == "error":
                items.append(f"[cell {index} error] {output['ename']}: {output['evalue']}")
            else:
                data = dict(output.get("data", {}))
                if "text/html" in data:  # what the book shows; the plain text is the same table's fallback
                    data.pop("text/plain", None)
                for mime, value in sorted(data.items()):
                    items.append(f"[cell {index} {mime}]\n" + normalise(_text(value), root))
    return items


def compare_builds(before: Path, after: Path, roots: tuple[str | None, str | None] = (None, None)) -> list[str]:
    """Differences between two finished builds (each a `_build` folder), as readable lines."""
    problems = []
    for kind, pattern, read in (
        ("chapter", "jupyter_execute/book/*.ipynb", notebook_outputs),
        ("table", "data-static/data/*.csv", lambda p, root: [normalise(p.read_text(), root)]),
    ):
        a = {p.name: p for p in before.glob(pattern)}
        b = {p.name: p for p in after.glob(pattern)}
        if not a and not b:
            problems.append(f"no {kind}s found in either build ({pattern})")
        for name in sorted(a.keys() - b.keys()):
            problems.append(f"{kind} {name}: only in the first build")
        for name in sorted(b.keys() - a.keys()):
            problems.append(f"{kind} {name}: only in the second build")
        for name in sorted(a.keys() & b.keys()):
            left, right = read(a[name], roots[0]), read(b[name], roots[1])
            if left == right:
                continue
            if len(left) != len(right):
                problems.append(f"{kind} {name}: {len(left)} outputs, then {len(right)}")
            diff = difflib.unified_diff("\n".join(left).splitlines(), "\n".join(right).splitlines(),
                                        "before", "after", n=1, lineterm="")
            problems.append(f"{kind} {name} differs:\n" + "\n".join(list(diff)[:40]))
    return problems


def count_outputs(build: Path) -> tuple[int, int]:
    chapters = sorted(build.glob("jupyter_execute/book/*.ipynb"))
    return len(chapters), sum(len(notebook_outputs(p)) for p in chapters)


def _git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def build_at(commit: str, runs_tar: Path, jupyter_book: Path) -> tuple[Path, str]:
    """The book built at `commit` on the records in `runs_tar`; cached by commit and records."""
    tree = CACHE / f"tree-{commit[:12]}-{runs_tar.stem}"
    build = tree / "_build"
    if (build / "html" / "index.html").exists():
        return build, str(tree)
    if tree.exists():
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, capture_output=True)
        shutil.rmtree(tree, ignore_errors=True)
    _git("worktree", "add", "--detach", str(tree), commit)
    shutil.rmtree(tree / "runs")
    with tarfile.open(runs_tar) as tar:
        tar.extractall(tree, filter="data")
    # The worktree's own kfaclab, ahead of the editable install of the main checkout.
    env = dict(os.environ, PYTHONPATH=str(tree))
    print(f"building the book at {commit[:12]} in {tree} ...", flush=True)
    done = subprocess.run([str(jupyter_book), "build", str(tree), "-W", "-n", "--keep-going"], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"the book does not build at {commit[:12]}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return build, str(tree)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", nargs="?", help="commit whose book is the reference")
    parser.add_argument("after", nargs="?", default="HEAD", help="commit to compare (default HEAD)")
    parser.add_argument("--outputs", nargs=2, metavar=("BUILD_A", "BUILD_B"), type=Path,
                        help="compare two finished _build folders instead of building")
    args = parser.parse_args(argv)
    if args.outputs:
        for build in args.outputs:
            if not (build / "jupyter_execute").is_dir():
                print(f"error: {build} is not a built book (no jupyter_execute/ in it); build one "
                      "with `make book` and pass its _build folder", file=sys.stderr)
                return 2
        a, b = args.outputs
        roots = (None, None)
    else:
        if not args.before:
            parser.print_usage(sys.stderr)
            print("error: name the commit to compare against, e.g. `scripts/compare-book.py HEAD~3`",
                  file=sys.stderr)
            return 2
        try:
            before, after = _git("rev-parse", args.before + "^{commit}"), _git("rev-parse", args.after + "^{commit}")
        except subprocess.CalledProcessError:
            print(f"error: {args.before!r} or {args.after!r} is not a commit of this repository",
                  file=sys.stderr)
            return 2
        jupyter_book = Path(sys.executable).parent / "jupyter-book"
        if not jupyter_book.exists():
            print("error: jupyter-book is not installed beside this Python; run it with .venv/bin/python "
                  "after `make book`", file=sys.stderr)
            return 2
        CACHE.mkdir(exist_ok=True)
        # Both books read the records committed at BEFORE.
        runs_tar = CACHE / f"runs-{before[:12]}.tar"
        if not runs_tar.exists():
            with open(runs_tar.with_suffix(".part"), "wb") as out:
                subprocess.run(["git", "archive", "--format=tar", before, "runs"], cwd=REPO, check=True, stdout=out)
            runs_tar.with_suffix(".part").rename(runs_tar)
        a, root_a = build_at(before, runs_tar, jupyter_book)
        b, root_b = build_at(after, runs_tar, jupyter_book)
        roots = (root_a, root_b)
    problems = compare_builds(a, b, roots)
    chapters, outputs = count_outputs(a)
    if problems:
        print("\n\n".join(problems))
        print(f"\nthe books differ ({len(problems)} differences)")
        return 1
    tables = len(list(a.glob("data-static/data/*.csv")))
    print(f"the books agree: {chapters} chapters, {outputs} outputs and {tables} CSV tables identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
