"""The safetensors <-> mindie transforms (registered as edges by converters/mindie.py). Tensors pass through untouched (lossless) except for the
opt-in `fold_norm_head` op; the configs change by the declared rewrites.

    >>> api.convert("Ling-lite/", "Ling-lite-mindie/", to="mindie", options={"variant": "lite"})  # doctest: +SKIP
"""

from __future__ import annotations

import torch

from ...core import bounded
from ...core.errors import BadInputError, ConfigSchemaError
from .config import (check_requirements, check_supported, restore_hf_config, to_mindie_config)
from .deploy import MindieOptions, resolve_deploy
from ...core.source import Source

NORM = "model.norm.weight"
HEAD = "lm_head.weight"
EPS = 1e-7       # ref: Ling modeling_bailing_moe.py compute_logit, w / (||w|| + 1e-7)
CHUNK = 8192     # lm_head rows per step when summing column norms (memory stays one chunk)
# The writer regenerates these; a copied stale one would contradict the new config.
MINDIE_OWNED = ("config.json.bak", "rank_table.json")


def to_mindie(src: Source, opts: MindieOptions) -> Source:
    """HF safetensors -> MindIE dir (config variant, backup, service config, rank table)."""
    hf = src.config
    check_supported(hf, src.path)
    fold = bool(opts.fold_norm_head)
    check_requirements(hf, src.path, fold_norm_head=fold)
    resolve_deploy(opts, hf)  # fail on bad deployment options before anything is written
    out = src
    if fold and not hf.get("norm_head", False):
        out, hf = fold_norm_head(src), {**hf, "norm_head": True}
    cfg, applied = to_mindie_config(hf)
    cfg, applied = _special_ids(cfg, out.aux, applied)
    aux = {k: v for k, v in out.aux.items() if k not in MINDIE_OWNED}
    notes = {**out.notes, "mindie": {"config_rewrites": applied,
                                     **({"folded_norm_head": True} if fold and out is not src else {})}}
    return out.derive(config=cfg, aux=aux, notes=notes, hf_config=hf)


def _special_ids(cfg: dict, aux: dict, applied: list[str]) -> tuple[dict, list[str]]:
    """eos/pad ids the source config lacks, from the tokenizer files or generation_config.json: MindIE
    falls back to 100001, a wrong token for every Ling vocabulary (schemas/mindie/)."""
    from pathlib import Path
    from ..dcp.megatron_config import tokenizer_ids
    missing = [k for k in ("eos_token_id", "pad_token_id") if cfg.get(k) is None]
    if not missing:
        return cfg, applied
    found = tokenizer_ids(Path(aux["tokenizer.json"]).parent) if "tokenizer.json" in aux else {}
    gen = _read_json(aux["generation_config.json"]) if "generation_config.json" in aux else {}
    cfg, applied = dict(cfg), list(applied)
    for key in missing:
        value, origin = found.get(key), "tokenizer_config.json"
        if value is None:
            value, origin = gen.get(key, gen.get("eos_token_id")), "generation_config.json"
        value = value[0] if isinstance(value, list) and value else value
        if isinstance(value, int):
            cfg[key] = value
            applied.append(f"set {key}={value} from {origin} (absent from config.json)")
    return cfg, applied


def _read_json(path) -> dict:
    try:
        obj = bounded.load_json(path, path.name)
    except (OSError, ValueError, BadInputError):
        return {}     # an unreadable generation_config.json only loses this fallback
    return obj if isinstance(obj, dict) else {}


def from_mindie(src: Source, opts: MindieOptions) -> Source:
    """MindIE dir -> plain HF safetensors (HF config from config.json.bak, else rewrites inverted)."""
    bak_path = src.aux.get("config.json.bak")
    bak = _read_bak(bak_path) if bak_path else None
    cfg, how = restore_hf_config(src.config, bak, src.path)
    aux = {k: v for k, v in src.aux.items() if k not in MINDIE_OWNED}
    return src.derive(config=cfg, aux=aux, notes={**src.notes, "mindie_restore": how}, hf_config=None)


def _read_bak(path) -> dict:
    try:
        bak = bounded.load_json(path, path.name)
    except BadInputError as e:
        raise ConfigSchemaError(e.message, path=path,
                                fix="repair it, or delete it to restore by inverting the rewrites") from None
    if not isinstance(bak, dict):
        raise ConfigSchemaError("must hold a JSON object", path=path, fix="repair or delete config.json.bak")
    return bak


# -- fold_norm_head: a named op with a declared inverse ------------------------------------
# MindIE always computes logits = h' . normalize(W)^T, where normalize divides each hidden
# column j of W by c_j = ||W[:, j]|| + eps. With g' = g * c (g = model.norm.weight) the
# normalised head reproduces the original h . W^T exactly in real arithmetic; only the
# bf16 rounding of g' is lost.

def column_norms(w_thunk) -> torch.Tensor:
    """c_j = ||W[:, j]||_2 over the vocab axis + eps, float32, summed chunk by chunk."""
    w = w_thunk()
    sq = torch.zeros(w.shape[1], dtype=torch.float32)
    for start in range(0, w.shape[0], CHUNK):
        sq += w[start:start + CHUNK].float().pow(2).sum(dim=0)
    return sq.sqrt() + EPS


def fold_norm_head(src: Source) -> Source:
    """norm_head false -> true without changing logits: scale the final norm by lm_head's column norms."""
    return _scale_norm(src, lambda g, c: g.float() * c, "fold_norm_head")


def unfold_norm_head(src: Source) -> Source:
    """Inverse of `fold_norm_head` (up to bf16 rounding)."""
    return _scale_norm(src, lambda g, c: g.float() / c, "unfold_norm_head")


def _scale_norm(src: Source, op, name: str) -> Source:
    norm_thunk, head_thunk, info = src.get(NORM), src.get(HEAD), src.info(NORM)

    def scaled() -> torch.Tensor:
        return op(norm_thunk(), column_norms(head_thunk)).to(info.dtype)

    thunks = {**src.thunks, NORM: scaled}
    notes = {**src.notes, "ops": [*src.notes.get("ops", []), f"{name}({NORM} by {HEAD} column norms)"]}
    return src.derive(thunks=thunks, notes=notes)
