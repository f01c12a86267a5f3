"""softmax BailingMoe (v1 / v2) -> hybrid-linear (Ring-linear layout), lazily, tensor by tensor.

The recipe is data (schemas/hybrid/conversion.json): softmax layers, MoE, norms, embeddings and the head
pass through bit-identical; each linear layer's QKV becomes MHA by repeating every KV head (the mapping
`repeat_kv` uses), `dense` (and v2 QK-norms) are copied, and the new output gate `g_proj` / norm `g_norm`
are initialised from a seed. The result is an initialisation: linear layers compute a different function
from the softmax layers they replace, so the published Ring-linear models were trained after conversion.

    >>> to_hybrid_linear("Ling-lite/", "Ring-lite-linear-init/", layer_group_size=7)   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from ..model import arch as arch_mod
from ..core import schemas
from ..core.errors import BadInputError, UnsupportedError
from ..core.source import Source, TensorInfo, torch_dtype
from ..model.config import ModelConfig
from ..model.ops import Op, split_qkv
from . import converter

RECIPE = "hybrid/conversion.json"
INIT_METHODS = ("normal", "zeros")


@dataclass(frozen=True)
class HybridPlan:
    """Everything the conversion decides before reading a tensor."""

    base: str                      # source family: 'bailing_moe' | 'bailing_moe_v2'
    layer_group_size: int
    linear: frozenset[int]         # main layers that become linear attention
    init_method: str               # 'normal' | 'zeros' for g_proj
    seed: int
    std: float                     # g_proj normal std (initializer_range)
    group_norm_size: int | None    # v2 only
    modeling_dir: Path | None


# ---------------------------------------------------------------- named ops (each with its inverse)


def expand_kv_to_mha(qkv: torch.Tensor, nh: int, nkv: int, d: int) -> torch.Tensor:
    """[(nh+2nkv)d, H] -> [3 nh d, H]: Q rows kept, each KV head's d rows repeated nh/nkv times in place."""
    q, k, v = split_qkv(qkv, nh, nkv, d)
    rep = nh // nkv

    def widen(x: torch.Tensor) -> torch.Tensor:  # [nkv*d, H] -> [nkv, d, H] -> [nh*d, H]; head j <- kv j // rep
        return x.reshape(nkv, d, -1).repeat_interleave(rep, dim=0).reshape(nh * d, -1)
    return torch.cat([q, widen(k), widen(v)], dim=0)


def collapse_mha_to_gqa(qkv: torch.Tensor, nh: int, nkv: int, d: int) -> torch.Tensor:
    """Inverse of expand_kv_to_mha: keep the first head of every group of nh/nkv K and V heads."""
    q, k, v = split_qkv(qkv, nh, nh, d)
    rep = nh // nkv

    def narrow(x: torch.Tensor) -> torch.Tensor:  # [nh*d, H] -> [nkv, rep, d, H] -> first of each group
        return x.reshape(nkv, rep, d, -1)[:, 0].reshape(nkv * d, -1)
    return torch.cat([q, narrow(k), narrow(v)], dim=0)


def _kv_shapes(to_heads: str):
    def shapes(p, ss):  # [(nh + 2 kv) d, H] with kv = nkv before, nh after (expand), or the reverse
        (s,) = ss
        return [((p["nh"] + 2 * p[to_heads]) * p["d"], *s[1:])]
    return shapes


# Each linear layer's QKV: GQA -> MHA; the inverse keeps the first copy of every KV head.
EXPAND_KV = Op("expand_kv_to_mha", _kv_shapes("nh"), lambda p, ts: [expand_kv_to_mha(ts[0], **p)],
               _kv_shapes("nkv"), lambda p, ts: [collapse_mha_to_gqa(ts[0], **p)])
OPS = {EXPAND_KV.name: EXPAND_KV}


def tensor_seed(seed: int, name: str) -> int:
    """Per-tensor seed: values depend on (seed, name) only, never on the order tensors are written."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") & (2 ** 63 - 1)


def init_gate(name: str, shape: tuple[int, ...], dtype, method: str, seed: int,
              std: float) -> torch.Tensor:
    """New g_proj weight: N(0, std^2) from its own generator ('normal') or zeros (every gate 0.5);
    `dtype` a torch dtype or a safetensors code."""
    dtype = torch_dtype(dtype)
    if method == "zeros":
        return torch.zeros(shape, dtype=dtype)
    g = torch.Generator().manual_seed(tensor_seed(seed, name))
    return (torch.randn(shape, generator=g, dtype=torch.float32) * std).to(dtype)


def _ones(shape: tuple[int, ...], dtype: str) -> torch.Tensor:
    return torch.ones(shape, dtype=torch_dtype(dtype))


def _relayout(src: Source, name: str, op: Op, params: dict) -> torch.Tensor:
    return op.forward(params, [src.load(name)])[0]


# ---------------------------------------------------------------- option parsing


def parse_init(text: str | None) -> tuple[str, int]:
    """'normal', 'normal:SEED', 'zeros' or a bare SEED -> (method, seed)."""
    text = (text or "normal:0").strip()
    method, _, seed = text.partition(":") if not text.isdigit() else ("normal", "", text)
    if method not in INIT_METHODS or (seed and not seed.isdigit()):
        raise BadInputError(f"--init {text!r} is not understood",
                            fix="use normal[:SEED], zeros, or a bare SEED (e.g. --init normal:1234)")
    return method, int(seed or 0)


def parse_layer_list(text: str, n_layers: int) -> frozenset[int]:
    """'0,2,5' -> {0, 2, 5}; every index must name a main layer."""
    out = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if not part.lstrip("-").isdigit():
            raise BadInputError(f"--linear-layers item {part!r} is not an integer", fix="use e.g. --linear-layers 0,1,2")
        i = int(part)
        if not 0 <= i < n_layers:
            raise BadInputError(f"--linear-layers {i} is out of range: the model has layers 0..{n_layers - 1}",
                                fix=f"use indices in 0..{n_layers - 1}")
        out.add(i)
    return frozenset(out)


def group_for(linear: frozenset[int], n_layers: int) -> int:
    """The layer_group_size whose pattern is exactly `linear`; published loaders read no explicit list."""
    for g in range(1, n_layers + 1):
        if arch_mod.linear_layer_set(n_layers, g) == linear:
            return g
    shown = "; ".join(f"G={g}: {sorted(arch_mod.linear_layer_set(n_layers, g))}" for g in range(2, min(n_layers, 6) + 1))
    raise BadInputError(f"linear layers {sorted(linear)} are not a layer_group_size pattern (layer l is softmax iff "
                        f"(l+1) % G == 0 or l >= L//G*G; no published loader reads a layer list)",
                        fix=f"use --layer-group-size G or its layer list ({shown})")


def _choose_group(base: str, n_layers: int, linear_layers: str | None, layer_group_size: int | None) -> int:
    if linear_layers is not None and layer_group_size is not None:
        raise BadInputError("--linear-layers and --layer-group-size both given", fix="give one of them")
    if layer_group_size is not None:
        if not 1 <= layer_group_size <= n_layers:
            raise BadInputError(f"--layer-group-size {layer_group_size} is out of range 1..{n_layers}",
                                fix=f"use 1 (no linear layer) .. {n_layers}")
        return layer_group_size
    if linear_layers is not None:
        return group_for(parse_layer_list(linear_layers, n_layers), n_layers)
    # The published sibling's value (conversion.json default_layer_group_size), at most the layer count.
    return min(int(schemas.load(RECIPE)["targets"][base]["default_layer_group_size"]), n_layers)


# ---------------------------------------------------------------- planning and checks


def _check_source(src: Source) -> str:
    """The source family, after refusing hybrids, unknown families, biases and quantized weights."""
    a = arch_mod.detect_architecture(src.config, src.path)
    recipe = schemas.load(RECIPE)
    if a.table.get("layer_pattern"):
        raise BadInputError(f"source is already hybrid-linear ({src.config['architectures'][0]})", path=src.path,
                            fix="convert the softmax parent checkpoint (BailingMoeForCausalLM / BailingMoeV2ForCausalLM)")
    if a.name not in recipe["targets"]:
        raise UnsupportedError(f"architecture {src.config['architectures'][0]!r} has no hybrid-linear form",
                               path=src.path, fix=f"supported: {', '.join(recipe['targets'])}")
    cfg = src.config
    if cfg.get("use_qkv_bias") or cfg.get("use_bias"):
        raise UnsupportedError("source has attention biases (use_qkv_bias/use_bias); "
                               "hybrid linear layers are bias-free", path=src.path,
                               fix="no published Ling checkpoint has them; remove the biases first")
    if cfg.get("quantization_config") or any(n.endswith("_scale_inv") for n in src.infos):
        raise UnsupportedError("source is quantized; expanded QKV rows would need new scales", path=src.path,
                               fix="dequantize first: ling-convert convert SRC BF16_DIR --to safetensors")
    return a.name


def plan_hybrid(src: Source, *, linear_layers: str | None = None, layer_group_size: int | None = None,
                init: str | None = None, group_norm_size: int | None = None,
                modeling_dir: str | Path | None = None) -> HybridPlan:
    """Validate options against the source and fix every choice; reads no tensor data."""
    base = _check_source(src)
    cfg = src.config
    mc = ModelConfig.of(cfg)
    n_layers = mc.num_hidden_layers
    group = _choose_group(base, n_layers, linear_layers, layer_group_size)
    method, seed = parse_init(init)
    recipe = schemas.load(RECIPE)
    std = float(cfg.get("initializer_range") or recipe["init"]["initializer_range_default"])
    gns = _group_norm(recipe["targets"][base], group_norm_size, mc.num_attention_heads, mc.head_dim)
    mdir = Path(modeling_dir) if modeling_dir is not None else None
    if mdir is not None and not mdir.is_dir():
        raise BadInputError("--modeling-dir is not a directory", path=mdir, fix="point it at the hybrid *.py files")
    return HybridPlan(base, group, arch_mod.linear_layer_set(n_layers, group), method, seed, std, gns, mdir)


def _group_norm(target, requested: int | None, nh: int, d: int) -> int | None:
    if not target["group_norm"]:
        if requested is not None:
            raise BadInputError("--group-norm-size applies to v2 sources only",
                                fix="v1-linear normalises the full attention width; drop the option")
        return None
    per = target["group_norm_default"]["heads_per_group"]
    gns = requested if requested is not None else (nh // per if nh % per == 0 else 1)
    if gns < 1 or (nh * d) % gns:
        raise BadInputError(f"--group-norm-size {gns} does not divide the attention width {nh * d}",
                            fix="use a divisor of num_attention_heads * head_dim")
    return gns


# ---------------------------------------------------------------- the lazy transform


def to_hybrid(src: Source, plan: HybridPlan) -> Source:
    """A new lazy Source in the hybrid layout; reused tensors keep their original thunks (bit-identical)."""
    cfg = src.config
    mc = ModelConfig.of(cfg)
    nh, nkv, d, hidden = mc.num_attention_heads, mc.num_key_value_heads, mc.head_dim, mc.hidden_size
    infos, thunks = dict(src.infos), dict(src.thunks)
    specs = schemas.load(RECIPE)["linear_layer_tensors"]
    for layer in sorted(plan.linear):
        prefix = f"model.layers.{layer}."
        qkv = src.infos.get(prefix + "attention.query_key_value.weight")
        want = ((nh + 2 * nkv) * d, hidden)
        if qkv is None or qkv.shape != want:
            raise BadInputError(f"expected shape {list(want)}, found {list(qkv.shape) if qkv else 'no tensor'}",
                                path=src.path, tensor=prefix + "attention.query_key_value.weight",
                                fix="check num_attention_heads / num_key_value_heads / head_dim in config.json")
        dtype = qkv.code           # a safetensors code: --dry-run plans without torch
        for spec in specs:
            name = prefix + spec["suffix"]
            op = spec["op"]
            if op == "copy":
                continue  # same name, same thunk: passes through untouched
            if op in OPS:
                p = {"nh": nh, "nkv": nkv, "d": d}
                (shape,) = OPS[op].forward_shapes(p, [qkv.shape])
                infos[name] = TensorInfo(shape, dtype)
                thunks[name] = partial(_relayout, src, name, OPS[op], p)
            elif op == "init_gate":
                infos[name] = TensorInfo((nh * d, hidden), dtype)
                thunks[name] = partial(init_gate, name, (nh * d, hidden), dtype, plan.init_method, plan.seed, plan.std)
            elif op == "ones":
                infos[name] = TensorInfo((nh * d,), dtype)
                thunks[name] = partial(_ones, (nh * d,), dtype)
            else:
                raise ValueError(f"{RECIPE}: unknown op {op!r}")
    out = src.derive(infos=infos, thunks=thunks, config=hybrid_config(cfg, plan), aux=_aux(src, plan))
    out.route = [*src.route, "to-hybrid-linear"]
    out.notes = {**src.notes, "hybrid_linear": manifest_notes(cfg, plan)}
    return out


def hybrid_config(cfg: dict, plan: HybridPlan) -> dict:
    """Pure rewrite: architectures, model_type, layer pattern and linear-attention fields; input untouched."""
    target = schemas.load(RECIPE)["targets"][plan.base]
    out = {k: v for k, v in cfg.items() if k != "auto_map"}
    out.update(architectures=[target["architecture"]], model_type=target["model_type"],
               layer_group_size=plan.layer_group_size, **dict(target["config_set"]))
    if plan.group_norm_size is not None:
        out["group_norm_size"] = plan.group_norm_size
    if plan.modeling_dir is not None:
        out["auto_map"] = dict(target["auto_map"])
    return out


def _aux(src: Source, plan: HybridPlan) -> dict[str, Path]:
    """Non-weight files minus the softmax remote code; plus the hybrid *.py from --modeling-dir."""
    aux = {n: p for n, p in src.aux.items() if not n.endswith(".py")}
    if plan.modeling_dir is None:
        return aux
    target = schemas.load(RECIPE)["targets"][plan.base]
    for ref in target["auto_map"].values():
        fname = ref.split(".")[0] + ".py"
        if not (plan.modeling_dir / fname).is_file():
            raise BadInputError(f"--modeling-dir lacks {fname} (auto_map names it)", path=plan.modeling_dir,
                                fix=f"supply the {target['architecture']} remote code files")
    for p in sorted(plan.modeling_dir.glob("*.py")):
        if p.is_file() and not p.is_symlink():
            aux[p.name] = p
    return aux


def manifest_notes(cfg: dict, plan: HybridPlan) -> dict:
    """What was reused, derived and created, and why; goes into ling-convert.json."""
    recipe = schemas.load(RECIPE)
    n_layers = ModelConfig.of(cfg).num_hidden_layers
    why = {s["suffix"]: {"op": s["op"], "why": s["why"]} for s in recipe["linear_layer_tensors"]}
    why["attention.g_proj.weight"].update(init=plan.init_method, seed=plan.seed,
                                          std=plan.std if plan.init_method == "normal" else None,
                                          seeding=recipe["init"]["seeding"])
    notes = {
        "base_architecture": cfg["architectures"][0],
        "target_architecture": recipe["targets"][plan.base]["architecture"],
        "layer_group_size": plan.layer_group_size,
        "linear_layers": sorted(plan.linear),
        "softmax_layers": sorted(set(range(n_layers)) - plan.linear),
        "reused_bit_identical": "every tensor not listed under linear_layer_tensors (softmax layers, MoE, norms, "
                                "embeddings, lm_head, MTP layers)",
        "linear_layer_tensors": why,
        "decay": "not stored: per-head slopes * (1 - l/(L-1) + 1e-5), computed at run time",
        "remote_code": ("copied from --modeling-dir" if plan.modeling_dir else
                        "left out (the source's *.py implement softmax attention); auto_map removed; "
                        "pass --modeling-dir with the hybrid files"),
        "status": recipe["status"],
        "caution": "an initialisation, not a trained model: linear layers compute a different function from the "
                   "softmax layers they replace; the published Ring-linear models were trained after conversion",
    }
    if plan.group_norm_size is not None:
        notes["group_norm_size"] = plan.group_norm_size
    if n_layers % plan.layer_group_size:
        notes["engine_note"] = schemas.load("hybrid/layer_pattern.json")["engine_note"]
    return notes


@dataclass(frozen=True)
class HybridOptions:
    linear_layers: str | None = None
    layer_group_size: int | None = None
    init: str | None = None
    group_norm_size: int | None = None
    modeling_dir: str | None = None


@converter("safetensors", "hybrid-linear", lossless=False, name="to-hybrid-linear", options=HybridOptions, demo=False)
def to_hybrid_linear(src: Source, opts: HybridOptions) -> Source:
    """Softmax Ling -> hybrid-linear: reuse weights, expand KV to MHA, seed the new gate (manifest says how)."""
    return to_hybrid(src, plan_hybrid(src, linear_layers=opts.linear_layers, layer_group_size=opts.layer_group_size,
                                      init=opts.init, group_norm_size=opts.group_norm_size,
                                      modeling_dir=opts.modeling_dir))
