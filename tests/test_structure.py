"""The package's shape: no import loop, nothing importing upward, and small modules.

Imports are read from the source (every `import` and `from ... import`, also those inside
functions, which run as surely as the others), so the test sees what a reader sees. An import
of a name that is a module (`from kfaclab.plots import style`) counts as an import of that
module; the parent package a submodule sits in is not counted (importing `kfaclab.plots.style`
runs `kfaclab/plots/__init__.py` first, but that package only re-exports its own modules).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kfaclab"
MAX_LINES = 500

# The layers, lowest first (data flows spec -> sweep -> train -> record -> results -> plots -> book).
# A module may import from a lower layer, or from its own group; never from a higher layer, nor
# from another group of its own layer (running a study and reading its results do not depend on
# each other). The longest matching prefix decides a module's group.
LAYERS = [
    {"foundation": ["kfaclab.__init__", "kfaclab.errors", "kfaclab.atomic", "kfaclab.computed", "kfaclab.interrupts",
                    "kfaclab.infrastructure"]},
    {"data and models": ["kfaclab.data", "kfaclab.models", "kfaclab.distributed", "kfaclab.comm_model",
                         "kfaclab.hessian"]},
    {"optimizers": ["kfaclab.optim"]},
    {"training and its record": ["kfaclab.train"]},
    {"a study's definition": ["kfaclab.sweep.__init__", "kfaclab.sweep.spec", "kfaclab.sweep.grid_axes",
                              "kfaclab.sweep.bracket"],
     "measurement": ["kfaclab.bench", "kfaclab.bench_distributed", "kfaclab.device_checks", "kfaclab.exactness"]},
    {"running a study": ["kfaclab.sweep"], "results": ["kfaclab.results"]},
    {"the noisy quadratic model": ["kfaclab.nqm", "kfaclab.nqm_bounds"]},
    {"the noisy quadratic model's tables": ["kfaclab.nqm_tables"]},
    {"charts": ["kfaclab.plots"]},
    {"chapters": ["kfaclab.report"], "live explorer": ["kfaclab.widgets"]},
    {"the command line": ["kfaclab.cli", "kfaclab.__main__"]},
]


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts)] = path
    return out


def _name(module: str) -> str:
    """kfaclab.plots.__init__ -> kfaclab.plots (the name other modules import it by)."""
    return module[: -len(".__init__")] if module.endswith(".__init__") else module


def imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The kfaclab modules `module` imports, by their file's module name."""
    package = module.rsplit(".", 1)[0] if not module.endswith(".__init__") else _name(module)
    by_name = {_name(m): m for m in known}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in by_name else base for a in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] == "kfaclab" and target in by_name and by_name[target] != module:
                found.add(by_name[target])
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(m, p, set(mods)) for m, p in mods.items()}


def group_of(module: str) -> tuple[int, str]:
    best = None
    for level, groups in enumerate(LAYERS):
        for group, prefixes in groups.items():
            for prefix in prefixes:
                if module == prefix or module.startswith(prefix + "."):
                    if best is None or len(prefix) > best[0]:
                        best = (len(prefix), level, group)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best[1], best[2]


def loops(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def upward(g: dict[str, set[str]]) -> list[str]:
    bad = []
    for a, targets in g.items():
        la, ga = group_of(a)
        for b in sorted(targets):
            lb, gb = group_of(b)
            if lb > la or (lb == la and gb != ga):
                bad.append(f"{a} ({ga}) imports {b} ({gb})")
    return bad


def test_the_package_has_no_import_loop():
    assert loops(graph()) == []


def test_nothing_imports_upward_or_sideways():
    assert upward(graph()) == []


def test_no_module_is_over_500_lines():
    long = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_checks_see_a_loop_and_an_upward_import():
    """The checks above fail when the shape breaks: a loop, and an import from a higher layer,
    and one between two groups of the same layer."""
    g = graph()
    looped = {k: set(v) for k, v in g.items()}
    looped["kfaclab.sweep.spec"].add("kfaclab.sweep.runner")  # runner imports spec: now a loop
    assert any({"kfaclab.sweep.spec", "kfaclab.sweep.runner"} <= set(c) for c in loops(looped))
    up = {k: set(v) for k, v in g.items()}
    up["kfaclab.results.claims_critical_batch"].add("kfaclab.nqm")
    up["kfaclab.results.study"].add("kfaclab.sweep.harvest")
    found = upward(up)
    assert any("claims_critical_batch" in line and "kfaclab.nqm" in line for line in found)
    assert any("results.study" in line and "sweep.harvest" in line for line in found)


@pytest.mark.parametrize("source,expected", [
    ("from kfaclab.plots import style\n", {"kfaclab.plots.style"}),
    ("from kfaclab.plots import scaling_chart\n", {"kfaclab.plots.__init__"}),
    ("def f():\n    import kfaclab.nqm\n", {"kfaclab.nqm"}),
    ("from . import style\n", {"kfaclab.plots.style"}),
    ("from .style import DASHED\n", {"kfaclab.plots.style"}),
    ("import numpy\n", set()),
])
def test_imports_are_read_as_python_resolves_them(tmp_path, source, expected):
    path = tmp_path / "m.py"
    path.write_text(source)
    assert imports("kfaclab.plots.scaling", path, set(modules())) == expected
