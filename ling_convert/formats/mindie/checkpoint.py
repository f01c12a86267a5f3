"""MindIE (Huawei Ascend) model directory: HF safetensors + MindIE's variant of config.json.

Layout written (the Ling README's ten manual steps, as data in `schemas/mindie/`):
  OUT/config.json            MindIE model config (declared rewrites of the HF config)
  OUT/config.json.bak        the HF config, kept as the recipe does
  OUT/*.safetensors (+index) tensors unchanged, any sharding (MindIE routes by key)
  OUT/mindie-service/config.json   service config, modelWeightPath -> OUT or --target-dir
  OUT/rank_table.json        for plus / multi-node / --servers
Modes: 750 for top-level *.json/*.py, 640 for the service config and rank table.

    >>> validate_mindie_dir("Ling-lite-mindie/")     # [] when deployable       # doctest: +SKIP
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ...core import bounded
from ...core.errors import LingConvertError
from ...core.source import Source
from ...model.config import ModelConfig
from .. import safetensors as st
from .config import check_supported, layout, normalise_spelling, schema_problems
from .transform import from_mindie, to_mindie
from .deploy import MindieOptions, build_rank_table, rank_table_problems, resolve_deploy, service_config

# -- detection and reading ------------------------------------------------------------

def _read_json(p: Path):
    if not bounded.exists(p):
        return None
    try:
        return bounded.load_json(p, p.name)
    except LingConvertError:     # the reader that needs the file reports it, with its reason
        return None


def detect(path: Path) -> bool:
    """A safetensors dir that carries MindIE's marks (backup HF config, service config, n_* expert keys)."""
    path = Path(path)
    if not path.is_dir() or not st.detect(path):
        return False
    lay = layout()
    if (path / lay["service_config"]).is_file():
        return True
    man = _read_json(path / "ling-convert.json")
    if isinstance(man, dict) and man.get("target_format") == "mindie":
        return True
    cfg = _read_json(path / "config.json")
    if not isinstance(cfg, dict) or (cfg.get("architectures") or [None])[0] != "BailingMoeForCausalLM":
        return False
    bak = _read_json(path / lay["hf_config_backup"])
    return isinstance(bak, dict) or "n_routed_experts" in cfg or "n_shared_experts" in cfg


def open_mindie(path: Path) -> Source:
    """Read a MindIE dir; the public plus-base spelling (n_routed_experts) is normalised on read."""
    src = st.open_source(Path(path), "mindie")
    check_supported(src.config, src.path / "config.json")
    cfg, applied = normalise_spelling(src.config)
    notes = {**src.notes, "mindie_read": applied} if applied else src.notes
    return src.derive(config=cfg, original_config=dict(src.config), notes=notes)


# -- writing ------------------------------------------------------------------------------

def write(src: Source, out, opts) -> Path:
    """Weights and model config via `write_hf_dir`, then the backup, service config and rank table."""
    from ..writer import write_hf_dir
    out, mopts = Path(out), opts.options or MindieOptions()
    lay = layout()
    if src.hf_config is None:
        # Re-deploying a MindIE dir (empty route): back to HF first, then the rewrites anew.
        src = to_mindie(from_mindie(src, MindieOptions()), mopts)
    info, hf = dict(src.notes["mindie"]), src.hf_config
    deploy = resolve_deploy(mopts, src.config)
    weight_path = str(out.resolve())
    svc = service_config(deploy, weight_path)
    rank = build_rank_table(deploy) if deploy.writes_rank_table else None
    for name, obj in (("service_config", svc), ("rank_table", rank)):
        problems = schema_problems(obj, name) if obj is not None else []
        if problems:  # our own output must meet our schema; a failure here is a bug
            raise RuntimeError(f"generated {name} fails its own schema: {problems[0]}")

    def extras(staged):
        staged.before_swap = apply_modes   # modes set in staging: a killed run never shows a dir without them
        staged.write_json(lay["hf_config_backup"], hf)
        staged.write_json(lay["service_config"], svc)
        if rank is not None:
            staged.write_json(lay["rank_table_file"], rank)
        return None

    summary = {"variant": deploy.variant, "base": deploy.base, "world_size": deploy.world_size,
               "nodes": deploy.nodes, "npu_ids": list(deploy.npu_ids), "model_weight_path": deploy.target_dir
               or weight_path, "rank_table": rank is not None, **info}
    clean = src.derive(notes={k: v for k, v in src.notes.items() if k != "mindie"})
    result = write_hf_dir(clean, out, opts, target="mindie", extra_manifest={"mindie": summary},
                          before_commit=extras)
    return Path(result)


def _mode(text: str) -> int:
    return int(text, 8)


def expected_modes(root: Path) -> dict[Path, int]:
    """File -> mode the recipe requires (top-level *.json/*.py 750; service config, rank table 640)."""
    m = layout()["modes"]
    want = {p: _mode(m["model_files"]["mode"]) for p in sorted(root.iterdir())
            if p.is_file() and (p.suffix in m["model_files"]["suffixes"] or p.name in m["model_files"]["names"])}
    for key, file_key in (("service_config", "service_config"), ("rank_table", "rank_table_file")):
        p = root / layout()[file_key]
        if p.is_file():
            want[p] = _mode(m[key]["mode"])
    return want


def apply_modes(root: Path) -> None:
    # NOTE: run on the complete staging dir (manifest and index included), just before the rename.
    for p, mode in expected_modes(root).items():
        os.chmod(p, mode)



# -- validation ---------------------------------------------------------------------------

def validate_mindie_dir(path: str | Path) -> list[str]:
    """Every reason a MindIE model dir would not deploy as the recipe intends; [] when fine.

    Checks the model config, service config and rank table against `schemas/mindie/*.schema.json`,
    their cross-field rules, the tensors against the config, file modes and MindIE's loader limits.
    """
    root = Path(path)
    if not root.is_dir():
        return [f"{root}: not a directory"]
    lay = layout()
    problems: list[str] = []
    cfg = _load(root / "config.json", problems)
    if isinstance(cfg, dict):
        problems += [f"config.json: {p}" for p in schema_problems(cfg, "model_config")]
        problems += _config_vs_tensors(root, cfg)
    bak = root / lay["hf_config_backup"]
    if bak.exists() and isinstance(cfg, dict):
        problems += _bak_problems(root, cfg, _load(bak, problems))
    svc = _load(root / lay["service_config"], problems, lay["service_config"]) \
        if (root / lay["service_config"]).exists() else None
    rt = _load(root / lay["rank_table_file"], problems) if (root / lay["rank_table_file"]).exists() else None
    if isinstance(svc, dict):
        problems += _service_problems(svc, rt, cfg if isinstance(cfg, dict) else {})
    if rt is not None:
        world = _get(svc, "BackendConfig.ModelDeployConfig.ModelConfig.0.worldSize")
        cards = _get(svc, "BackendConfig.npuDeviceIds.0")
        problems += [f"{lay['rank_table_file']}: {p}" for p in rank_table_problems(
            rt, world_size=world, cards_per_node=len(cards) if isinstance(cards, list) else None)]
    return problems + _file_problems(root)


def _load(p: Path, problems: list[str], label: str | None = None):
    obj = _read_json(p)
    if obj is None:   # label: the path inside the dir ("mindie-service/config.json" is not "config.json")
        problems.append(f"{label or p.name}: missing or not valid JSON")
    return obj


def _get(tree, dotted: str):
    for part in dotted.split("."):
        if isinstance(tree, list) and part.isdigit() and int(part) < len(tree):
            tree = tree[int(part)]
        elif isinstance(tree, dict) and part in tree:
            tree = tree[part]
        else:
            return None
    return tree


def _config_vs_tensors(root: Path, cfg: dict) -> list[str]:
    """Tensor names and the attention width must match what config.json declares."""
    try:
        src = st.open_source(root, "mindie")
        from ...model.arch import detect_architecture
        cfg, _ = normalise_spelling(cfg)  # the n_* spelling is reported by the schema check already
        a = detect_architecture(cfg, root / "config.json")
        missing = [n for n in a.expected_names(cfg) if n not in src.infos]
        out = [f"weights: {len(missing)} tensor(s) config.json requires are absent, e.g. {missing[0]}"] if missing else []
        qkv = "model.layers.0.attention.query_key_value.weight"
        if qkv in src.infos:
            mc = ModelConfig.of(cfg)
            want = (mc.num_attention_heads + 2 * mc.num_key_value_heads) * mc.head_dim
            if src.infos[qkv].shape[0] != want:
                out.append(f"config.json: {qkv} has {src.infos[qkv].shape[0]} rows but the config implies {want} "
                           "(head_dim missing or wrong?)")
        return out
    except LingConvertError as e:
        return [f"weights: {e.one_line()}"]
    except (KeyError, TypeError, ValueError) as e:
        return [f"config.json: cannot check tensors ({type(e).__name__}: {e})"]


def _bak_problems(root: Path, cfg: dict, bak) -> list[str]:
    from .config import restore_hf_config
    if not isinstance(bak, dict):
        return []
    try:
        restore_hf_config(cfg, bak, root / layout()["hf_config_backup"])
    except LingConvertError as e:
        return [e.one_line()]
    return []


def _service_problems(svc: dict, rt, cfg: dict) -> list[str]:
    name = layout()["service_config"]
    found = schema_problems(svc, "service_config")
    if found:
        return [f"{name}: {p}" for p in found]
    out = []
    srv, dep = svc["ServerConfig"], svc["BackendConfig"]["ModelDeployConfig"]
    ports = [srv["port"], srv["managementPort"], srv["metricsPort"], srv["interCommPort"],
             svc["BackendConfig"]["multiNodesInferPort"]]
    if len(set(ports)) != len(ports):
        out.append(f"{name}: ports {ports} must be distinct")
    if dep["maxInputTokenLen"] > dep["maxSeqLen"]:
        out.append(f"{name}: maxInputTokenLen {dep['maxInputTokenLen']} exceeds maxSeqLen {dep['maxSeqLen']}")
    mpe = cfg.get("max_position_embeddings")
    if isinstance(mpe, int) and dep["maxSeqLen"] > mpe:
        out.append(f"{name}: maxSeqLen {dep['maxSeqLen']} exceeds max_position_embeddings {mpe}")
    world, cards = dep["ModelConfig"][0]["worldSize"], len(svc["BackendConfig"]["npuDeviceIds"][0])
    multi = svc["BackendConfig"]["multiNodesInferEnabled"]
    if world % cards or (not multi and world != cards):
        out.append(f"{name}: worldSize {world} does not fit {cards} NPU(s) per node "
                   f"(multiNodesInferEnabled={str(multi).lower()})")
    if multi and rt is None:
        out.append(f"{name}: multiNodesInferEnabled but no {layout()['rank_table_file']} beside it")
    return out


def _file_problems(root: Path) -> list[str]:
    lim, out = layout()["loader_limits"], []
    entries = list(root.iterdir())
    if len(entries) > lim["max_files_per_dir"]:
        out.append(f"{len(entries)} entries in the model dir; MindIE lists at most {lim['max_files_per_dir']}")
    for p in entries:
        if p.is_symlink():
            out.append(f"{p.name}: a symlink; MindIE refuses links (copy the file)")
        elif p.suffix == ".json" and p.is_file() and p.stat().st_size > lim["max_config_file_bytes"]:
            out.append(f"{p.name}: larger than MindIE's {lim['max_config_file_bytes']} byte limit")
    if not any(p.suffix == ".safetensors" for p in entries):
        out.append("no *.safetensors weights (MindIE loads only safetensors)")
    for p, mode in expected_modes(root).items():
        have = stat.S_IMODE(p.lstat().st_mode)
        if have != mode:
            out.append(f"{p.relative_to(root)}: mode {have:o}, the recipe requires {mode:o} (chmod {mode:o})")
    return out


def compat_notes(cfg: dict) -> list[str]:
    """Warnings that do not make the dir invalid but matter on real Ascend hardware."""
    counts = layout()["attention_layer_counts"]["values"]
    n = cfg.get("num_hidden_layers")
    if n not in counts:
        return [f"the patched atb_llm builds attention only for {' or '.join(map(str, counts))}-layer models "
                f"(Ling-lite / Ling-plus); this one has {n} layers"]
    return []

