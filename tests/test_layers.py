"""The package's layer rules, checked on the source tree (pure AST, no imports run).

core <- (quant, model, hub) <- reference <- formats <- converters <- (pipeline, verify) <- api <- (demo) <- cli.
Every import counts, including those inside functions: an import hidden in a function still
ties the two modules together.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "ling_convert"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60

# Rank of each top-level part; an import from a lower rank to a higher one runs upward.
RANKS = {
    "": 0, "core": 0,
    "quant": 1, "model": 1, "hub": 1,
    "reference": 2, "testing": 2,
    "formats": 3, "testing_shapes": 3,      # writes safetensors headers with the formats' own helpers
    "converters": 4,
    "pipeline": 5, "verify": 5,
    "api": 6,
    "demo": 7,
    "cli": 8, "__main__": 9,
}
# The only upward imports allowed, with the reason each one exists.
ALLOWED_UPWARD = {
    # The demo's tiny models come from testing.py, which lists them for the tests as well;
    # testing.py sits low (it only builds checkpoints) and demo.py sits above api.
}


def modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(PKG).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def _targets(mod: str, is_pkg: bool, node: ast.AST, known: dict) -> list[str]:
    if isinstance(node, ast.Import):
        raw = [a.name.removeprefix("ling_convert").lstrip(".") for a in node.names if a.name.startswith("ling_convert")]
    else:
        if node.level == 0:
            if not (node.module or "").startswith("ling_convert"):
                return []
            base = node.module.removeprefix("ling_convert").lstrip(".")
        else:
            parts = mod.split(".") if mod else []
            parts = parts if is_pkg else parts[:-1]
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join(parts + ([node.module] if node.module else []))
        raw = [f"{base}.{a.name}".lstrip(".") if f"{base}.{a.name}".lstrip(".") in known else base
               for a in node.names]
    out = []
    for t in raw:
        while t and t not in known:
            t = t.rpartition(".")[0]
        out.append(t)
    return out


def import_graph() -> dict[str, set[str]]:
    known = modules()
    graph: dict[str, set[str]] = {m: set() for m in known}
    for mod, path in known.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[mod] |= {t for t in _targets(mod, path.name == "__init__.py", node, known) if t != mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
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
                    found.append(sorted(comp))
    return found


def rank(mod: str) -> int:
    return RANKS[mod.split(".")[0]]


def upward(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    return {(a, b) for a, deps in graph.items() for b in deps if rank(b) > rank(a)}


def test_every_part_has_a_rank():
    assert {m.split(".")[0] for m in modules()} <= set(RANKS)


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_imports_point_down():
    up = upward(import_graph())
    assert len(ALLOWED_UPWARD) <= 1
    assert up <= set(ALLOWED_UPWARD), sorted(up - set(ALLOWED_UPWARD))


def test_module_and_function_lengths():
    long_modules, long_functions = [], []
    for mod, path in modules().items():
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(mod)
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                    long_functions.append(f"{mod}.{node.name}")
    assert long_modules == []
    assert long_functions == []


def test_the_checker_sees_cycles_and_upward_imports():
    # Negative control: the checks must fail on a graph that breaks the rules.
    graph = {"formats.a": {"converters.b"}, "converters.b": {"formats.a"}, "core.c": set()}
    assert cycles(graph) == [["converters.b", "formats.a"]]
    assert upward(graph) == {("formats.a", "converters.b")}


# What the CLI may import from the library besides `api`: the package root (its version) and the
# process-level parts of core that must run before the library loads (deferred torch, malloc
# tuning, command-module loading) or that the CLI edge maps to messages (the error hierarchy).
CLI_MAY_IMPORT = {"api", "", "core.errors", "core.deferred", "core.heap", "core.plugins"}


def cli_imports(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    return {(m, t) for m, ts in graph.items() if m == "cli" or m.startswith("cli.") or m == "__main__"
            for t in ts if not (t == "cli" or t.startswith("cli.")) and t not in CLI_MAY_IMPORT}


def test_the_cli_reaches_the_library_through_api():
    assert cli_imports(import_graph()) == set()
    # Negative control: a command importing a converter directly is caught.
    assert cli_imports({"cli.fp8_cmd": {"converters.fp8", "api"}}) == {("cli.fp8_cmd", "converters.fp8")}
