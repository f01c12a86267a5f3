"""The config commands' API: `yarn`, `show`, `diff_paths`, `validate_path` over HF dirs, MindIE dirs,
single config.json files and GGUF files. Pure rewrites live in `config_rewrite`.

    >>> yarn("Ling-lite/", factor=4, out="Ling-lite-128k/")          # doctest: +SKIP
    >>> yarn("Ling-lite-128k/", remove=True, in_place=True)          # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..core import bounded
from ..formats.gguf import config as config_gguf
from ..model.config_rewrite import apply_yarn, check_factor, check_positive_int, diff, normalize_config, remove_yarn
from ..model.config_schema import schema_for, validate_config
from ..core.errors import BadInputError, LingConvertError, OutputExistsError
from ..formats import read_config
from ..core.guard import check_apart, in_place_target
from ..core.output import MANIFEST, StagedOutput, sha256_file

CONFIG = "config.json"
MINDIE_BACKUP = "config.json.bak"  # MindIE keeps the HF config here and puts its variant in config.json
# MindIE base variants rename the MoE keys to DeepSeek's.
MINDIE_ALIASES = {"n_routed_experts": "num_experts", "n_shared_experts": "num_shared_experts"}
_SKIP_DIRS = {".cache", ".git"}  # hub download metadata: stale once config.json changes


@dataclass
class Target:
    """What a PATH names: kind is hf | mindie | json | gguf; `configs` maps file name -> parsed config."""

    path: Path
    kind: str
    root: Path
    configs: dict[str, dict] = field(default_factory=dict)


def _is_gguf(path: Path) -> bool:
    if path.suffix == ".gguf":
        return True
    bounded.regular_file(path)      # a FIFO would block the read below
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def _load_json(path: Path) -> dict:
    cfg = read_config(path.parent, path.name)
    if cfg is None:
        raise BadInputError("file does not exist", path=path)
    return cfg


def open_target(path: str | Path) -> Target:
    """Classify PATH and parse its config files (nothing is written)."""
    path = Path(path)
    if not path.exists():
        raise BadInputError("path does not exist", path=path, fix="pass a model directory, a config.json or a .gguf")
    if path.is_file():
        if _is_gguf(path):
            return Target(path, "gguf", path.parent)
        return Target(path, "json", path.parent, {path.name: _load_json(path)})
    if not bounded.exists(path / CONFIG):     # present but not a regular file: read_config says why
        raise BadInputError(f"no {CONFIG} in this directory", path=path,
                            fix="pass an HF/MindIE model directory, a config.json file or a .gguf file")
    names = [CONFIG] + ([MINDIE_BACKUP] if (path / MINDIE_BACKUP).is_file() else [])
    kind = "mindie" if len(names) == 2 else "hf"
    return Target(path, kind, path, {n: _load_json(path / n) for n in names})


# ---------------------------------------------------------------- yarn


def _transform(factor, original, remove: bool) -> tuple[Callable[[dict], dict], dict]:
    """The rewrite to run and the parsed options (for the manifest); argument errors come from here."""
    if remove:
        if factor is not None or original is not None:
            raise BadInputError("--remove takes no --factor or --original-max-position-embeddings",
                                fix="drop those options; --remove restores the recorded original")
        return remove_yarn, {"operation": "yarn --remove"}
    if factor is None:
        raise BadInputError("--factor is required (or --remove)", fix="e.g. --factor 4")
    factor = check_factor(factor)
    if original is not None:
        original = check_positive_int(original, "--original-max-position-embeddings")
    return (lambda cfg: apply_yarn(cfg, factor, original),
            {"operation": "yarn", "factor": factor, "original_max_position_embeddings": original})


def _check_mode(path: Path, out, in_place: bool) -> Path | None:
    if (out is None) == (not in_place):
        raise BadInputError("choose exactly one of --out OUT and --in-place",
                            fix="--out writes a new copy; --in-place rewrites the config files where they are")
    if out is None:
        return None
    out = Path(out)
    check_apart(out, [path], what="--out (overlaps the input)")
    return out


def yarn(path: str | Path, *, factor: Any = None, original: Any = None, remove: bool = False,
         out: str | Path | None = None, in_place: bool = False, force: bool = False, dry_run: bool = False) -> dict:
    """Set (or with `remove`, undo) YaRN scaling in every config PATH holds; see `apply_yarn`. In a
    MindIE dir the service config's sequence lengths follow max_position_embeddings.

    Returns {"kind", "path", "output", "changes": {file: diff rows}, "changed", "dry_run"}.
    """
    path = Path(path)
    transform, op = _transform(factor, original, remove)  # argument errors before any I/O
    out = None if dry_run and out is None and not in_place else _check_mode(path, out, in_place)
    target = open_target(path)
    if target.kind == "gguf":
        return {**config_gguf.rewrite_gguf(path, transform, out=out, in_place=in_place, force=force, manifest=op,
                                           dry_run=dry_run), "dry_run": dry_run}
    # Every file's rewrite is computed (and may fail) before any file is written.
    new = {name: config_gguf.located(target.root / name, transform, cfg) for name, cfg in target.configs.items()}
    old = dict(target.configs)
    for name, (before, after) in _mindie_service(target, new).items():
        old[name], new[name] = before, after
    changes = {name: diff(old[name], new[name]) for name in new}
    result = {"kind": target.kind, "path": str(path), "output": str(out or path), "changes": changes,
              "changed": any(changes.values()), "dry_run": dry_run}
    if dry_run:
        return result
    if in_place:
        _write_in_place(target, new, changes, op)
    elif target.kind == "json":
        _write_json_file(out, _json_bytes(new[path.name], path), force)
    else:
        _write_copy(target, new, out, force, {**op, "config_changes": changes})
    return result


def _mindie_service(target: Target, new: dict) -> dict[str, tuple[dict, dict]]:
    """{service config name: (old, new)}: its maxSeqLen and maxInputTokenLen scale with the model's
    max_position_embeddings (capped by it), so `yarn --remove` restores them exactly."""
    from ..core import schemas
    from ..formats.mindie import layout
    rel = layout()["service_config"]
    if target.kind != "mindie" or not (target.root / rel).is_file():
        return {}
    a, b = (c.get(CONFIG, {}).get("max_position_embeddings") for c in (target.configs, new))
    if not (isinstance(a, int) and isinstance(b, int) and a > 0 and a != b):
        return {}
    svc = _load_json(target.root / rel)
    out = json.loads(json.dumps(svc))
    bind = schemas.load("mindie/service_config_template.json")["bindings"]
    seq = _dotted(out, bind["max_seq_len"], lambda v: min(round(v * b / a), b))
    inp = _dotted(out, bind["max_input_token_len"], lambda v: min(round(v * b / a), seq))
    # The scheduler must admit a whole prompt, as deploy.service_config sets it.
    _dotted(out, "BackendConfig.ScheduleConfig.maxPrefillTokens", lambda v: max(v, inp))
    return {rel: (svc, out)}


def _dotted(tree: dict, dotted: str, fn: Callable[[Any], Any]):
    """Replace the value at `a.b.0.c` with fn(value); returns the new value."""
    *head, last = dotted.split(".")
    for part in head:
        tree = tree[int(part)] if isinstance(tree, list) else tree[part]
    key = int(last) if isinstance(tree, list) else last
    tree[key] = fn(tree[key])
    return tree[key]


def _json_bytes(cfg: dict, like: Path) -> bytes:
    """config.json text as HF writes it (indent 2), keeping the original's trailing newline or lack of it."""
    with open(like, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(f.tell() - 1, 0))
        newline = "\n" if f.read(1) == b"\n" else ""
    return (json.dumps(cfg, indent=2, ensure_ascii=False) + newline).encode()


def _replace_file(path: Path, data: bytes, mode: int) -> None:
    # Write beside, fsync, rename: a crash leaves the old or the new file, never half of one.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)   # never write through a link planted under this name
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_in_place(target: Target, new: dict, changes: dict, op: dict) -> None:
    # NOTE: two MindIE files are replaced one after the other; a rerun is safe because yarn is idempotent.
    names = [n for n in new if changes[n]] + ([MANIFEST] if (target.root / MANIFEST).is_file() else [])
    files = {n: in_place_target(target.root / n, target.root) for n in names}   # every link checked first
    for name, cfg in new.items():
        if changes[name]:
            p = files[name]
            _replace_file(p, _json_bytes(cfg, p), stat.S_IMODE(p.stat().st_mode))
    if any(changes.values()):
        _refresh_manifest(target.root, [n for n in new if changes[n]], op)


def _refresh_manifest(root: Path, names: list[str], op: dict) -> None:
    """Keep an existing ling-convert.json truthful: new hashes for the rewritten files, the edit logged."""
    mpath = in_place_target(root / MANIFEST, root)
    try:
        manifest = bounded.load_json(mpath, MANIFEST, limit=bounded.MAX_INDEX) if mpath.is_file() else None
    except (OSError, ValueError, LingConvertError):
        manifest = None  # not ours to repair; `verify`/`pull` will report it
    if not isinstance(manifest, dict):
        return
    files = manifest.get("files")
    if isinstance(files, dict):
        for name in names:
            if name in files:
                files[name] = sha256_file(root / name)
    manifest.setdefault("edits", []).append(op)
    data = (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode()
    _replace_file(mpath, data, stat.S_IMODE(mpath.stat().st_mode))  # MindIE dirs want 750 kept


def _write_json_file(out: Path, data: bytes, force: bool) -> None:
    if out.exists() and not force:
        raise OutputExistsError("output already exists", path=out, fix="choose a new path or pass --force")
    if not out.parent.is_dir():
        raise BadInputError("parent directory does not exist", path=out.parent, fix="create it first")
    _replace_file(out, data, 0o644)


def _walk(root: Path):
    """(relative name, path) of every file to carry over, following file symlinks (hub snapshots)."""
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(".partial"))
        for d in dirnames:
            if (base / d).is_symlink():
                raise BadInputError("symlinked directory inside the model directory", path=base / d,
                                    fix="replace it with a real directory, or use --in-place")
        for name in sorted(filenames):
            p = base / name
            rel = p.relative_to(root).as_posix()
            if rel == MANIFEST or not p.is_file():
                continue  # our manifest is regenerated; sockets and dangling links are not model files
            yield rel, p


def _write_copy(target: Target, new: dict, out: Path, force: bool, manifest: dict) -> None:
    src_manifest = target.root / MANIFEST
    try:
        old = bounded.load_json(src_manifest, MANIFEST, limit=bounded.MAX_INDEX)
        old = {k: v for k, v in old.items() if k != "files"} if isinstance(old, dict) else {}
    except (OSError, ValueError, LingConvertError):
        old = {}
    with StagedOutput(out, sources=[target.root], force=force) as st:
        for rel, src in _walk(target.root):
            mode = stat.S_IMODE(src.stat().st_mode)  # MindIE insists on 750/640 modes
            if rel in new:
                st.write_bytes(rel, _json_bytes(new[rel], src), mode)
            else:
                st.copy(rel, src, mode)
        st.commit({**manifest, "source": str(target.path), **({"source_manifest": old} if old else {})})
    if src_manifest.is_file():
        # NOTE: after the rename, as the MindIE writer does: the shared commit writes the manifest 644.
        os.chmod(out / MANIFEST, stat.S_IMODE(src_manifest.stat().st_mode))


# ---------------------------------------------------------------- show / diff / validate


def show(path: str | Path, normalized: bool = False, config_from: str | Path | None = None) -> dict:
    """{"kind", "path", "configs": {file: config or GGUF metadata}}; for a Megatron DCP dir, the config
    a conversion would use (its config.json, the common.pt args, or `config_from`)."""
    if config_from is not None or _is_dcp_dir(Path(path)):
        return _checkpoint_config(Path(path), config_from, normalized)
    t = open_target(path)
    if t.kind == "gguf":
        return {"kind": "gguf", "path": str(t.path), "configs": {t.path.name: config_gguf.metadata(t.path)}}
    norm = normalize_config if normalized else (lambda c: c)
    return {"kind": t.kind, "path": str(t.path), "configs": {n: norm(c) for n, c in t.configs.items()}}


def _is_dcp_dir(path: Path) -> bool:
    return path.is_dir() and (path / ".metadata").is_file() and not (path / CONFIG).is_file()


def _checkpoint_config(path: Path, config_from, normalized: bool) -> dict:
    from ..formats import open_source
    src = open_source(path)
    cfg, origin = src.config, src.config_origin or CONFIG
    if config_from is not None:
        cfg, origin = read_config(Path(config_from)), str(config_from)
        if cfg is None:
            raise BadInputError("no config.json here", path=config_from, fix="point --config-from at an HF model directory")
    if cfg is None:
        why = src.config_error or "no config.json and no common.pt args to derive one from"
        raise BadInputError(f"no config ({why})", path=path,
                            fix="pass --config-from HF_DIR (the HF model directory this checkpoint came from)")
    return {"kind": src.format, "path": str(path),
            "configs": {f"{CONFIG} (from {origin})": normalize_config(cfg) if normalized else cfg}}


def diff_paths(a: str | Path, b: str | Path, normalized: bool = False) -> list[dict]:
    """Changed fields from A to B (config.json of a dir, or GGUF metadata)."""
    ta, tb = open_target(a), open_target(b)
    if (ta.kind == "gguf") != (tb.kind == "gguf"):
        raise BadInputError("cannot diff GGUF metadata against an HF config", path=b,
                            fix="compare two GGUF files, or two HF/MindIE configs")
    va, vb = (_main_view(t, normalized) for t in (ta, tb))
    return diff(va, vb)


def _main_view(t: Target, normalized: bool) -> dict:
    if t.kind == "gguf":
        return config_gguf.metadata(t.path)
    cfg = t.configs[CONFIG if CONFIG in t.configs else t.path.name]
    return normalize_config(cfg) if normalized else cfg


def validate_path(path: str | Path) -> dict:
    """{"kind", "path", "checked": [{"file", "schema", "problems": [line, ...]}], "ok"}; never raises for
    schema problems (bad paths and unreadable files still raise)."""
    t = open_target(path)
    if t.kind == "gguf":
        checked = [{"file": t.path.name, "schema": "gguf rope-scaling keys",
                    "problems": config_gguf.validate_gguf(t.path)}]
    elif t.kind == "mindie":
        checked = [_check_hf(MINDIE_BACKUP, t.configs[MINDIE_BACKUP]), _check_mindie(t)]
    else:
        checked = [_check_hf(name, cfg) for name, cfg in t.configs.items()]
    return {"kind": t.kind, "path": str(t.path), "checked": checked,
            "ok": not any(c["problems"] for c in checked)}


def _check_hf(name: str, cfg: dict) -> dict:
    try:
        problems = [p.line() for p in validate_config(cfg, name)]
    except LingConvertError as e:  # unknown architecture: no schema to check against
        return {"file": name, "schema": None, "problems": [e.message]}
    return {"file": name, "schema": schema_for(cfg, name), "problems": problems}


def _check_mindie(t: Target) -> dict:
    """The MindIE module's own validator when it exists; else the HF schema over de-aliased keys."""
    try:
        mod = importlib.import_module("ling_convert.formats.mindie")
    except ModuleNotFoundError:
        mod = None
    fn = getattr(mod, "validate_mindie_dir", None)
    if fn is None:
        cfg = {MINDIE_ALIASES.get(k, k): v for k, v in t.configs[CONFIG].items()}
        return {**_check_hf(CONFIG, cfg), "schema": "hf (MindIE key aliases folded)"}
    try:
        res = fn(t.root)
    except LingConvertError as e:
        res = [e.one_line()]
    items = res if isinstance(res, (list, tuple)) else []
    # file None: the MindIE validator covers the whole dir and names each file in its messages.
    return {"file": None, "schema": "mindie", "problems": [str(x) for x in items]}
