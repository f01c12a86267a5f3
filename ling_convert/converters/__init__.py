"""Converter edges and the route planner.

An edge is a *lazy* transform `Source -> Source` between two format nodes,
registered with its endpoints:

    @converter("bin", "safetensors", lossless=True)
    def bin2st(src, opts): return src.derive(format="safetensors")

A route is a chain of edges found by breadth-first search; applying it wraps
thunks only, so a multi-hop conversion reads each tensor once and writes it
once, with no intermediate files. The target format's writer then streams it.
"""

from __future__ import annotations

import importlib
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from ..errors import RouteNotFoundError
from ..source import Source


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    name: str
    transform: Callable[[Source, dict], Source] = field(compare=False)
    lossless: bool = False
    summary: str = ""
    demo_options: dict | None = field(default=None, compare=False)  # None: the demo skips this edge


_EDGES: dict[tuple[str, str], Edge] = {}
_MODULES = ("bin2st", "fp8", "dcp", "mindie", "gguf")


def converter(src: str, dst: str, *, lossless: bool, name: str | None = None, summary: str = "",
              demo_options: dict | None = None):
    """Register a transform as the edge src -> dst (`demo_options`: how `ling-convert demo` runs it)."""
    def deco(fn):
        doc = summary or (fn.__doc__ or "").strip().split("\n")[0]
        _EDGES[(src, dst)] = Edge(src, dst, name or fn.__name__, fn, lossless, doc,
                                  {} if demo_options is None else demo_options)
        return fn
    return deco


def _load_all() -> None:
    for mod in _MODULES:
        try:
            importlib.import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{mod}":
                raise


def all_edges() -> list[Edge]:
    _load_all()
    return list(_EDGES.values())


def plan_route(src: str, dst: str) -> list[Edge]:
    """Shortest chain of edges from format `src` to format `dst` ([] when equal)."""
    if src == dst:
        return []
    edges = all_edges()
    prev: dict[str, Edge] = {}
    queue, seen = deque([src]), {src}
    while queue:
        node = queue.popleft()
        for e in edges:
            if e.src == node and e.dst not in seen:
                prev[e.dst] = e
                seen.add(e.dst)
                queue.append(e.dst)
    if dst not in prev:
        reachable = sorted(seen - {src})
        raise RouteNotFoundError(f"no conversion route from {src!r} to {dst!r}",
                                 fix=f"from {src!r} you can reach: {', '.join(reachable) or 'nothing'}")
    route, node = [], dst
    while node != src:
        route.append(prev[node])
        node = prev[node].src
    return route[::-1]


def apply_route(src: Source, route: list[Edge], opts: dict | None = None) -> Source:
    for e in route:
        src = e.transform(src, opts or {})
        src.route = [*src.route, e.name]
        src.format = e.dst
    return src
