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

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable

from ..core.errors import RouteNotFoundError
from ..core.options import build, compose
from ..core.source import Source
from ..core.plugins import load_modules


@dataclass(frozen=True)
class NoOptions:
    """An edge that takes no options."""


@dataclass(frozen=True)
class CommonOptions:
    """Options every route reads (the pipeline applies them before the first edge)."""
    config_from: str | None = None


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    name: str
    transform: Callable[[Source, object], Source] = field(compare=False)   # (src, the route's options object)
    lossless: bool = False
    summary: str = ""
    demo_options: dict | None = field(default=None, compare=False)  # None: the demo skips this edge
    options: type = field(default=NoOptions, compare=False)         # frozen dataclass: the keys it reads


_EDGES: dict[tuple[str, str], Edge] = {}
_MODULES = ("fp8", "gguf", "bin2st", "dcp", "mindie", "hybrid")   # the order `formats` and the demo list them


def converter(src: str, dst: str, *, lossless: bool, name: str | None = None, summary: str = "",
              demo_options: dict | None = None, options: type = NoOptions, demo: bool = True):
    """Register a transform as the edge src -> dst (`demo_options`: how `ling-convert demo` runs it)."""
    def deco(fn):
        doc = summary or (fn.__doc__ or "").strip().split("\n")[0]
        _EDGES[(src, dst)] = Edge(src, dst, name or fn.__name__, fn, lossless, doc,
                                  ({} if demo_options is None else demo_options) if demo else None, options)
        return fn
    return deco


def _load_all() -> None:
    load_modules(__name__, _MODULES)


def _module_rank(e: Edge) -> int:
    # Edges list in _MODULES order whichever module was imported first (the demo table depends on it).
    mod = e.transform.__module__.rpartition(".")[2]
    return _MODULES.index(mod) if mod in _MODULES else len(_MODULES)


def all_edges() -> list[Edge]:
    _load_all()
    return sorted(_EDGES.values(), key=_module_rank)


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


def apply_route(src: Source, route: list[Edge], opts=None) -> Source:
    """Wrap `src` in each edge of `route`; `opts`: the route's options object (`route_options`) or a mapping."""
    if opts is None or isinstance(opts, Mapping):
        opts = route_options(route, None, opts)
    for e in route:
        src = e.transform(src, opts)
        src.route = [*src.route, e.name]
        src.format = e.dst
    return src


def route_options(route: list[Edge], writer_options: type | None, given=None):
    """One frozen object with every option the route's edges and the target's writer read.

    `given` (a mapping or an options object) may set only those: a misspelt key is an OptionError."""
    cls = compose((CommonOptions, *(e.options for e in route), writer_options))
    return build(cls, given, where=f"for the route {' -> '.join(e.name for e in route) or '(none)'}")
