"""Tensor-name patterns with `{layer}` / `{expert}` placeholders: the one place they become matchers.

Two forms: a regex over the whole name (`compile_pattern`), and a dict key for tables whose
placeholders fill whole dot segments (`segment_key`: one dict hit per name).

    >>> compile_pattern("model.layers.{layer}.mlp.experts.{expert}.up_proj.weight").match(
    ...     "model.layers.3.mlp.experts.7.up_proj.weight")["expert"]
    '7'
    >>> segment_key("decoder.layers.{layer}.mlp.linear_fc2.weight")
    ('decoder.layers.#.mlp.linear_fc2.weight', ('layer',))
    >>> segment_key("decoder.layers.1.mlp.linear_fc2.weight")
    ('decoder.layers.#.mlp.linear_fc2.weight', ('1',))
"""

from __future__ import annotations

import re
from functools import lru_cache

_PLACEHOLDER = re.compile(r"\\\{(layer|expert)\\\}")
_SEGMENT = re.compile(r"\{(\w+)\}\Z")


@lru_cache(maxsize=None)
def compile_pattern(pattern: str) -> re.Pattern:
    """A regex matching the whole name, digits for each placeholder (named groups `layer`, `expert`)."""
    seen: set[str] = set()

    def group(m: re.Match) -> str:
        name = m.group(1)
        if name in seen:          # the same placeholder twice must hold the same number
            return f"(?P={name})"
        seen.add(name)
        return rf"(?P<{name}>\d+)"
    return re.compile(_PLACEHOLDER.sub(group, re.escape(pattern)) + r"\Z")


def combine(patterns) -> re.Pattern:
    """Compiled patterns as one alternation: `m.lastgroup` is `p{i}` for the i-th that matched.

    One regex call per name instead of one per pattern (Ling-1T has 62,336 names).

    >>> combine([compile_pattern("a.{layer}.x"), compile_pattern("b.{layer}.y")]).match("b.3.y").lastgroup
    'p1'
    """
    alts = []
    for i, p in enumerate(patterns):   # group names repeat across patterns: suffix them with the index
        body = re.sub(r"\(\?P([<=])(\w+)", lambda m, i=i: f"(?P{m.group(1)}{m.group(2)}_{i}", p.pattern)
        alts.append(f"(?P<p{i}>{body})")
    return re.compile("|".join(alts))


def segment_key(text: str) -> tuple[str, tuple[str, ...]]:
    """'a.{layer}.b' -> ('a.#.b', ('layer',)); 'a.3.b' -> ('a.#.b', ('3',)): a pattern and its names share a key."""
    names, parts = [], []
    for seg in text.split("."):
        m = _SEGMENT.match(seg)
        if m or seg.isdigit():
            names.append(m.group(1) if m else seg)
            parts.append("#")
        else:
            parts.append(seg)
    return ".".join(parts), tuple(names)
