"""The import layers of ARCHITECTURE.md, read from the code with ``ast``: nothing imports upward,
and no two modules import each other, directly or around a longer loop.

Every import counts, including those inside functions (a lazy import is still a dependency: the
old CLI cycle ran through one).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# package -> the packages its modules may import (itself included). Lower layers first.
ALLOWED: dict[str, set[str]] = {
    "curation": {"curation"},  # core
    "engines": {"curation", "engines"},  # pure engines
    "graph": {"curation", "engines", "graph"},  # the concept graph (an engine)
    "training": {"curation", "training"},  # model, objective, loader, loop
    "democorpus": {"curation", "democorpus"},  # the demo corpus builder
    "pipelines": {"curation", "engines", "graph", "training", "democorpus", "pipelines"},  # jobs
    "annotator_ui": {"curation", "engines", "annotator_ui"},  # the web app: handed its job actions
    "cli": {"curation", "engines", "graph", "training", "democorpus", "pipelines", "annotator_ui", "cli"},
}

# ``python -m curation.cli`` predates the cli package and is named in users' job scripts and
# cluster manifests: this one alias may point at the entry point, and nothing imports it.
ENTRY_ALIASES = {"curation.cli": {"cli.main"}}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in ALLOWED:
        for p in (ROOT / pkg).rglob("*.py"):
            rel = p.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = p
    return out


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules imported anywhere in ``path`` (resolved to the longest known module name)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: set[str] = set()
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(p, m, set(mods)) for m, p in mods.items()}


def test_no_module_imports_upward():
    bad = []
    for mod, deps in _graph().items():
        for d in deps:
            if d in ENTRY_ALIASES.get(mod, set()):
                continue
            if d.split(".")[0] not in ALLOWED[mod.split(".")[0]]:
                bad.append(f"{mod} imports {d}")
    assert not bad, "imports that point up a layer (see ARCHITECTURE.md):\n" + "\n".join(sorted(bad))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        x = stack.pop()
                        on.discard(x)
                        comp.append(x)
                        if x == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
            elif w not in index:
                index[w] = low[w] = counter
                counter += 1
                stack.append(w)
                on.add(w)
                work.append((w, iter(sorted(graph.get(w, ())))))
            elif w in on:
                low[v] = min(low[v], index[w])
    return out


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "modules that import each other: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_checker_sees_an_upward_import_and_a_cycle():
    """The checks above must be able to fail: a planted upward import and a planted cycle."""
    g = {"curation.a": {"pipelines.b"}, "pipelines.b": {"curation.a"}}
    assert _cycles(g) == [["curation.a", "pipelines.b"]]
    assert "pipelines" not in ALLOWED["curation"]
    src = "def f():\n    from pipelines.review import apply_reviews\n"
    tmp = ROOT / ".pytest_cache" / "layer_probe.py"
    tmp.parent.mkdir(exist_ok=True)
    tmp.write_text(src)
    assert _imports(tmp, "curation.probe", {"pipelines.review", "pipelines"}) == {"pipelines.review"}


# Ray stays at the job edge: engines and everything else below the jobs run without it.
NO_RAY = ("engines", "graph", "training", "democorpus", "annotator_ui")


def test_ray_only_at_the_job_edge():
    bad = []
    for mod, path in _modules().items():
        if mod.split(".")[0] not in NO_RAY:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            )
            bad += [f"{mod} imports {n}" for n in names if n == "ray" or n.startswith("ray.")]
    assert not bad, "Ray imported below the jobs layer:\n" + "\n".join(bad)
