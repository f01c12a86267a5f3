"""The GGUF mapping table (`schemas/gguf/<arch>.json`, "tensors"): rules and name grouping.

Shared by the writer (checks names before writing) and the to-gguf / from-gguf edges.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...core.errors import UnknownTensorError
from ...core.names import compile_pattern
from ...model.gguf_ops import get_op
from ...model.ops import Op


# -- the mapping table ---------------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    index: int
    hf: str
    gguf: tuple[str, ...]
    op: Op
    entry: object = field(compare=False)


def rules(table) -> list[Rule]:
    out = []
    for i, e in enumerate(table["tensors"]):
        g = e["gguf"]
        out.append(Rule(i, e["hf"], (g,) if isinstance(g, str) else tuple(g), get_op(e.get("op")), e))
    return out


@dataclass
class Group:
    """One application of a rule: a layer's tensors on the matched side, by slot."""

    rule: Rule
    layer: int | None
    slots: dict[int, str] = field(default_factory=dict)   # expert index or gguf pattern index -> name

    def fmt(self, pattern: str, **kw) -> str:
        return pattern.format(layer=self.layer, **kw)


def group_names(names: list[str], rs: list[Rule], side: str, gguf_arch: str, where) -> list[Group]:
    """Match every name to a rule (side 'hf' or 'gguf'); an unmatched name is an error."""
    pats = [(r, slot, compile_pattern(p)) for r in rs for slot, p in enumerate((r.hf,) if side == "hf" else r.gguf)]
    groups: dict[tuple, Group] = {}
    for name in names:
        for r, slot, rx in pats:
            m = rx.match(name)
            if m:
                layer = int(m["layer"]) if "layer" in rx.groupindex else None
                g = groups.setdefault((r.index, layer), Group(r, layer))
                g.slots[int(m["expert"]) if "expert" in rx.groupindex else slot] = name
                break
        else:
            raise UnknownTensorError(f"no {gguf_arch} GGUF mapping for this tensor", path=where, tensor=name,
                                     fix=f"schemas/gguf/{gguf_arch}.json lists the tensors llama.cpp's "
                                         f"{gguf_arch} graph has")
    # globals first in table order, then layer by layer (llama.cpp does not care; readers do)
    return sorted(groups.values(), key=lambda g: (g.layer is not None, g.layer or 0, g.rule.index))
