"""`inspect`: what a checkpoint is, from headers and config only (no tensor data is read).

Parameters are counted on the canonical HF-named view of any format (the route to safetensors,
applied lazily), so FP8 scales, GGUF stacking and Megatron layouts count as the model they hold.
"""

from __future__ import annotations

from pathlib import Path

from ..core.errors import LingConvertError
from ..core.source import ordered
from ..model import arch as arch_mod
from ..model.config import ModelConfig
from ..model.counts import check_counts
from . import HF_NAMED, open_checkpoint, prepare


def stored_dtypes(src) -> dict[str, dict[str, int]]:
    """{dtype: {"tensors": n, "bytes": b}} as stored (GGUF: ggml types with their file bytes)."""
    gguf_types = (src.notes.get("gguf") or {}).get("tensor_bytes")
    if gguf_types:
        counts = src.notes["gguf"]["tensor_types"]
        return {t: {"tensors": counts[t], "bytes": b} for t, b in sorted(gguf_types.items())}
    out: dict[str, dict[str, int]] = {}
    for i in src.infos.values():
        d = out.setdefault(i.dtype_name, {"tensors": 0, "bytes": 0})
        d["tensors"] += 1
        d["bytes"] += i.nbytes
    return dict(sorted(out.items()))


def _hf_view(src, path: Path, fmt: str | None):
    """The source's tensors under canonical HF names (metadata only), for counting parameters."""
    if src.format in HF_NAMED:
        return src
    return prepare(path, "safetensors", from_format=fmt or src.format)[0]


def inspect_checkpoint(path: str | Path, fmt: str | None = None) -> dict:
    """Format, architecture, layer/expert counts, parameters, dtypes (tensors and bytes), files."""
    src = open_checkpoint(path, fmt)
    cfg = src.config or {}
    dtypes = stored_dtypes(src)
    info: dict = {"path": str(src.path), "format": src.format, "tensors": len(src.infos),
                  "bytes": sum(d["bytes"] for d in dtypes.values()), "dtypes": dtypes}
    try:
        a = arch_mod.detect_architecture(cfg, src.path)
        check_counts(a, src)
    except Exception as e:  # inspect still reports what it can about the files
        info["architecture"] = None
        info["architecture_error"] = str(e)
        return info
    mc = ModelConfig.of(cfg)
    kinds = mc.layer_kinds
    info.update({
        "architecture": cfg["architectures"][0], "arch_family": a.name,
        "layers": mc.num_hidden_layers,
        "dense_layers": sum(1 for k in kinds.values() if k == "dense"),
        "moe_layers": sum(1 for k in kinds.values() if k == "moe"),
        "mtp_layers": sum(1 for k in kinds.values() if k == "mtp"),
        "experts": mc.num_experts, "experts_per_token": mc.experts_per_token,
        "shared_experts": mc.shared_experts,
        "hidden_size": mc.hidden_size, "head_dim": mc.head_dim,
        "vocab_size": mc.vocab_size,
    })
    try:
        info["parameters"] = arch_mod.param_counts(a, cfg, _hf_view(src, Path(path), fmt).infos)
    except LingConvertError as e:
        info["parameters"], info["parameters_error"] = None, e.one_line()
    if src.format in HF_NAMED:
        expected = a.expected_names(cfg)
        known = set(expected)
        info["missing_tensors"] = [n for n in expected if n not in src.infos][:20]
        info["extra_tensors"] = [n for n in ordered(src.infos) if n not in known][:20]
    root = Path(src.path)
    info["files"] = sorted(p.name for p in root.glob("*") if p.is_file()) if root.is_dir() else [root.name]
    return info
