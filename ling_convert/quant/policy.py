"""Declared precision policy: which tensors a quantiser converts, which stay in high precision.

One table per architecture in `schemas/precision/<arch>.json`, with named
placeholders ({layer}, {expert}). Names neither list covers stay unchanged and
are reported, so a new tensor kind is never quantised by accident.

    >>> p = load_policy("bailing_moe_v2")
    >>> p.action("model.layers.3.mlp.experts.7.up_proj.weight"), p.ue8m0("model.layers.3.mlp.experts.7.up_proj.weight")
    ('quantize', True)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property, lru_cache

from ..core import schemas
from ..core.errors import UnsupportedError
from ..core.names import combine, compile_pattern

@dataclass(frozen=True)
class Policy:
    name: str
    quantize: tuple[tuple[re.Pattern, bool], ...]   # (pattern, ue8m0 in Ling's recipe)
    keep: tuple[re.Pattern, ...]

    @cached_property
    def _rules(self) -> tuple[re.Pattern, list[tuple[str, bool]]]:
        """Every pattern as one regex, and per alternative its (action, ue8m0); quantize rules first."""
        rules = [(p, "quantize", flag) for p, flag in self.quantize] + [(p, "keep", False) for p in self.keep]
        return combine([p for p, _, _ in rules]), [(act, flag) for _, act, flag in rules]

    def _rule(self, name: str) -> tuple[str, bool]:
        combined, outcome = self._rules
        m = combined.match(name)
        return outcome[int(m.lastgroup[1:])] if m else ("unlisted", False)

    def action(self, name: str) -> str:
        """'quantize', 'keep', or 'unlisted' (kept too, but reported)."""
        return self._rule(name)[0]

    def ue8m0(self, name: str) -> bool:
        """True where Ling's own recipe rounds scales to powers of two (`--scale-fmt ling`)."""
        return self._rule(name)[1]


@lru_cache(maxsize=None)
def load_policy(arch_name: str) -> Policy:
    fname = f"{arch_name}.json"
    if fname not in schemas.listing("precision"):
        raise UnsupportedError(f"no FP8 precision policy for architecture {arch_name!r}",
                               fix=f"add schemas/precision/{fname} (which tensors to quantise and keep)")
    t = schemas.load(f"precision/{fname}")
    return Policy(t["name"], tuple((compile_pattern(e["name"]), bool(e.get("ue8m0"))) for e in t["quantize"]),
                  tuple(compile_pattern(e["name"]) for e in t["keep"]))


def module_of(name: str) -> str:
    """'model.layers.0.mlp.gate.weight' -> 'model.layers.0.mlp.gate' (engines match module prefixes)."""
    return name.rsplit(".", 1)[0] if name.endswith((".weight", ".bias")) else name
