"""GGUF side of the config commands: read metadata, rewrite the RoPE-scaling keys into a new file.

The metadata is mapped to an HF-shaped view (`max_position_embeddings`, `rope_scaling`) so the
same pure `apply_yarn` / `remove_yarn` run on it. GGUFWriter writes the header, metadata and
tensor infos; tensor bytes are then copied file to file (never mapped, so RSS stays flat), and
the output is reopened and compared tensor by tensor before it replaces anything.

    >>> rewrite_gguf("m.gguf", lambda v: apply_yarn(v, 4), out="m-yarn.gguf")   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ...core import bounded
from ...model.config_rewrite import diff, normalize_rope_scaling
from ...core.errors import BadInputError, CorruptFileError, LingConvertError, UnsupportedError, VerificationError
from ...core.guard import in_place_target
from ...core.output import MANIFEST, StagedOutput
from .meta import HF_CONFIG_KEY   # the HF config.json our own GGUF export embeds; llama.cpp ignores it

ARCH_KEY = "general.architecture"
CTX = "{arch}.context_length"
SCALING = "{arch}.rope.scaling."
# HF rope_scaling field -> GGUF key suffix under {arch}.rope.scaling.
PARAM_KEYS = {"factor": "factor", "original_max_position_embeddings": "original_context_length",
              "beta_fast": "yarn_beta_fast", "beta_slow": "yarn_beta_slow", "attention_factor": "yarn_attn_factor"}
SUMMARY_ITEMS = 16  # longer arrays (tokenizer vocab) are shown as a count plus a digest
_CHUNK = 1 << 24  # 16 MiB: the most tensor data held in memory at once


def located(where: Path, transform: Callable[[dict], dict], cfg: dict) -> dict:
    """Run a pure rewrite; its errors name the file they came from."""
    try:
        return transform(cfg)
    except LingConvertError as e:
        if e.path is None:
            e.path = str(where)
        raise


def open_reader(path: Path):
    from gguf import GGUFReader
    from .guard import check_header
    check_header(path)
    try:
        return GGUFReader(path)
    except (ValueError, IndexError, OSError, KeyError, RecursionError) as e:
        raise CorruptFileError(f"not a readable GGUF file ({' '.join(str(e).split())})", path=path,
                               fix="re-export or re-download the file") from None


def fields(reader, path: Path | None = None) -> dict[str, tuple[Any, list]]:
    """key -> (decoded value, value types), in file order, without the GGUF.* header pseudo-fields."""
    out = {}
    for key, f in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        try:
            out[key] = (f.contents(), list(f.types))
        except ValueError as e:   # e.g. a string value that is not UTF-8
            raise CorruptFileError(f"metadata key {key!r} cannot be decoded ({' '.join(str(e).split())[:160]})",
                                   path=path, fix="re-export or re-download the file") from None
    return out


def architecture(kv: dict, path: Path) -> str:
    arch = kv.get(ARCH_KEY, (None,))[0]
    if not isinstance(arch, str) or not arch:
        raise CorruptFileError(f"metadata lacks {ARCH_KEY!r}", path=path, fix="re-export the GGUF file")
    return arch


def _summary(value: Any) -> Any:
    if isinstance(value, list) and len(value) > SUMMARY_ITEMS:
        digest = hashlib.sha256(repr(value).encode()).hexdigest()[:12]
        return f"<array of {len(value)} items, sha256 {digest}>"
    return value


def metadata(path: Path) -> dict[str, Any]:
    """Every metadata key -> value (long arrays summarised), for `config show` / `config diff`."""
    reader = open_reader(path)
    view = {k: _summary(v) for k, (v, _) in fields(reader, path).items()}
    if isinstance(view.get(HF_CONFIG_KEY), str):
        try:  # shown (and diffed) field by field rather than as one long string
            view[HF_CONFIG_KEY] = bounded.parse_json(view[HF_CONFIG_KEY], path)
        except LingConvertError:
            pass
    view["(tensors)"] = len(reader.tensors)
    return view


def rope_view(kv: dict, arch: str) -> dict:
    """The HF-shaped slice of GGUF metadata that YaRN rewrites touch."""
    prefix = SCALING.format(arch=arch)
    get = lambda suffix: kv.get(prefix + suffix, (None,))[0]  # noqa: E731
    kind = get("type")
    view: dict[str, Any] = {"max_position_embeddings": kv.get(CTX.format(arch=arch), (None,))[0]}
    if kind in (None, "none"):
        view["rope_scaling"] = None
        return view
    scaling = {"type": kind, "rope_type": kind}  # as apply_yarn spells it, so a no-op diffs empty
    for hf, suffix in PARAM_KEYS.items():
        if get(suffix) is not None:
            scaling[hf] = get(suffix)
    view["rope_scaling"] = scaling
    return view


def _key_updates(view: dict, arch: str) -> tuple[dict[str, tuple[Any, Any]], set[str]]:
    """New metadata (key -> (value, GGUFValueType)) and the keys to drop, for a rewritten view."""
    from gguf import GGUFValueType as T
    prefix = SCALING.format(arch=arch)
    sets = {CTX.format(arch=arch): (int(view["max_position_embeddings"]), T.UINT32)}
    scaling = normalize_rope_scaling(view)
    if scaling is None:
        return sets, {prefix + s for s in ("type", *PARAM_KEYS.values())}
    sets[prefix + "type"] = (scaling["rope_type"], T.STRING)
    for hf, suffix in PARAM_KEYS.items():
        if scaling.get(hf) is not None:
            kind = T.UINT32 if hf == "original_max_position_embeddings" else T.FLOAT32
            sets[prefix + suffix] = (int(scaling[hf]) if kind == T.UINT32 else float(scaling[hf]), kind)
    return sets, set()


def _plan(kv: dict, sets: dict, drops: set, arch: str) -> list[tuple[str, Any, Any, Any]]:
    """(key, value, type, sub_type) in output order: existing keys keep their place, new ones go last."""
    from gguf import GGUFValueType as T
    plan = []
    for key, (value, types) in kv.items():
        if key == ARCH_KEY or key in drops:
            continue  # GGUFWriter writes general.architecture itself, first
        if key in sets:
            value, vtype = sets[key]
            if key == CTX.format(arch=arch):
                vtype = types[0]  # keep the file's integer width for the context length
            plan.append((key, value, vtype, None))
            continue
        if types[0] == T.ARRAY and (len(types) != 2 or not value):
            raise UnsupportedError(f"metadata key {key!r} is a nested or empty array, which the gguf package "
                                   "cannot rewrite")
        plan.append((key, value, types[0], types[-1] if types[0] == T.ARRAY else None))
    plan.extend((k, v, t, None) for k, (v, t) in sets.items() if k not in kv)
    return plan


def _write(reader, arch: str, plan: list, dst: Path) -> None:
    """Header, metadata and tensor infos through GGUFWriter; tensor bytes copied file-to-file."""
    from gguf import GGUFWriter, Keys
    w = GGUFWriter(None, arch)
    for key, value, vtype, sub in plan:
        if key == Keys.General.ALIGNMENT:
            w.add_custom_alignment(int(value))  # also sets the writer's data alignment
        else:
            w.add_key_value(key, value, vtype, sub_type=sub)
    for t in reader.tensors:
        w.add_tensor_info(t.name, t.data.shape, t.data.dtype, int(t.n_bytes), raw_dtype=t.tensor_type)
    w.write_header_to_file(path=dst)
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    align = w.data_alignment
    # NOTE: same padding as GGUFWriter.write_tensor_data, without mapping the tensors: memmap pages
    # would count toward RSS, so bytes go kernel-side (copy_file_range) or through one small buffer.
    with open(reader.data.filename, "rb") as src, open(dst, "r+b") as out:
        out.seek(0, os.SEEK_END)
        for t in reader.tensors:
            out.write(bytes(-out.tell() % align))
            _copy_range(src, out, int(t.data_offset), int(t.n_bytes))
            out.write(bytes(-int(t.n_bytes) % align))
        out.flush()


def _copy_range(src, out, offset: int, n: int) -> None:
    """Append n bytes of `src` from `offset` to `out`."""
    out.flush()
    start = out.tell()
    try:
        done = 0
        while done < n:
            k = os.copy_file_range(src.fileno(), out.fileno(), min(n - done, _CHUNK), offset + done)
            if k == 0:
                raise CorruptFileError("tensor data ends early", path=Path(src.name), fix="re-export the file")
            done += k
        out.seek(start + n)
        return
    except OSError:  # no copy_file_range here (old kernel, cross-device): a bounded buffer instead
        out.seek(start)
        out.truncate()
    for chunk in _chunks(src, offset, n):
        out.write(chunk)


def _chunks(f, offset: int, n: int):
    while n > 0:
        b = os.pread(f.fileno(), min(n, _CHUNK), offset)
        if not b:
            raise CorruptFileError("tensor data ends early", path=Path(f.name), fix="re-export the file")
        yield b
        offset, n = offset + len(b), n - len(b)


def _same_bytes(fa, a, fb, b) -> bool:
    """Tensor `a` of file fa and `b` of fb hold the same bytes (compared chunk by chunk)."""
    if a.n_bytes != b.n_bytes:
        return False
    return all(x == y for x, y in zip(_chunks(fa, int(a.data_offset), int(a.n_bytes)),
                                      _chunks(fb, int(b.data_offset), int(b.n_bytes))))


def _verify(src_reader, dst: Path, plan: list) -> None:
    """Reopen the output: every planned key, and every tensor's name, type and bytes, as intended."""
    out = open_reader(dst)
    kv = fields(out)
    for key, value, _, _ in plan:
        got = kv.get(key, (None,))[0]
        if got != value and not (isinstance(value, float) and np.float32(value) == np.float32(got)):
            raise VerificationError(f"rewritten metadata {key!r} reads back as {got!r}, wrote {value!r}", path=dst)
    if len(out.tensors) != len(src_reader.tensors):
        raise VerificationError("tensor count changed in the rewrite", path=dst)
    with open(src_reader.data.filename, "rb") as fa, open(dst, "rb") as fb:
        for a, b in zip(src_reader.tensors, out.tensors):
            if (a.name, a.tensor_type, a.shape.tolist()) != (b.name, b.tensor_type, b.shape.tolist()) \
                    or not _same_bytes(fa, a, fb, b):
                raise VerificationError("tensor changed in the rewrite", path=dst, tensor=a.name)


def _embedded_config(kv: dict, transform: Callable[[dict], dict], path: Path) -> tuple[dict, dict] | None:
    """(old, new) of the HF config our GGUF writer embeds, so it stays in step with the keys."""
    if HF_CONFIG_KEY not in kv:
        return None
    try:
        cfg = bounded.parse_json(kv[HF_CONFIG_KEY][0], path)
    except (TypeError, BadInputError):
        raise CorruptFileError(f"metadata {HF_CONFIG_KEY!r} is not bounded, valid JSON", path=path,
                               fix="re-export the GGUF file") from None
    return (cfg, located(path, transform, cfg)) if isinstance(cfg, dict) else None


def rewrite_gguf(path: Path, transform: Callable[[dict], dict], *, out: Path | None, in_place: bool,
                 force: bool = False, manifest: dict | None = None, dry_run: bool = False) -> dict:
    """Apply `transform` to the RoPE view of a GGUF file and write the result to `out` (or in place);
    `dry_run` returns the changes and writes nothing."""
    reader = open_reader(path)
    kv = fields(reader)
    arch = architecture(kv, path)
    if CTX.format(arch=arch) not in kv:
        raise BadInputError(f"metadata lacks {CTX.format(arch=arch)!r}; cannot size the YaRN context", path=path,
                            fix="pass the first shard of a split GGUF, or re-export with context_length")
    split = kv.get("split.count", (1,))[0]
    if split and int(split) > 1 and not in_place and not dry_run:
        raise UnsupportedError(f"split GGUF ({split} files): only the first shard holds metadata", path=path,
                               fix="use --in-place on a copy of the shard set")
    view = rope_view(kv, arch)
    new_view = located(path, transform, view)
    changes = diff(view, new_view)
    embedded = _embedded_config(kv, transform, path)
    if embedded:
        changes += diff(*embedded, prefix=HF_CONFIG_KEY)
    target = in_place_target(path, path.parent) if in_place else Path(out)
    result = {"kind": "gguf", "path": str(path), "output": str(target), "changes": {path.name: changes},
              "changed": bool(changes)}
    if dry_run or (in_place and not changes):
        return result
    sets, drops = _key_updates(new_view, arch)
    if embedded:
        from gguf import GGUFValueType as T
        sets[HF_CONFIG_KEY] = (json.dumps(embedded[1], sort_keys=True), T.STRING)
    plan = _plan(kv, sets, drops, arch)
    old = _sidecar(path)
    # In place, the file is both source and output: that is the request, nothing to guard.
    with StagedOutput(target, sources=[] if in_place else [path], force=force or in_place, single_file=True) as st:
        dst = st.path(target.name)
        _write(reader, arch, plan, dst)
        _verify(reader, dst, plan)
        os.chmod(dst, stat.S_IMODE(path.stat().st_mode))
        st.done(target.name)
        st.commit({**(manifest or {}), "source": str(path), "config_changes": {path.name: changes},
                   **({"source_manifest": old} if old else {})})
    return result


def _sidecar(path: Path) -> dict:
    """The provenance a GGUF already carries beside it (minus file hashes), kept in the new manifest."""
    try:
        old = bounded.load_json(path.with_name(path.name + "." + MANIFEST), MANIFEST, limit=bounded.MAX_INDEX)
    except (OSError, ValueError, LingConvertError):
        return {}
    return {k: v for k, v in old.items() if k != "files"} if isinstance(old, dict) else {}


def validate_gguf(path: Path) -> list[str]:
    """Problems with the RoPE-scaling metadata (YaRN needs factor > 1, the original context, agreement)."""
    kv = fields(open_reader(path), path)
    arch = architecture(kv, path)
    view = rope_view(kv, arch)
    s, ctx, prefix = view["rope_scaling"], view["max_position_embeddings"], SCALING.format(arch=arch)
    problems = []
    if ctx is None:
        problems.append(f"key {CTX.format(arch=arch)!r}: expected a positive integer, missing")
    if s and s["rope_type"] == "yarn":
        factor, orig = s.get("factor"), s.get("original_max_position_embeddings")
        if factor is None or not factor > 1:
            problems.append(f"key {prefix + 'factor'!r}: expected a number > 1, got {factor!r}")
        if orig is None:
            problems.append(f"key {prefix + 'original_context_length'!r}: expected a positive integer "
                            "(required for yarn), missing")
        elif factor is not None and ctx is not None and ctx != round(factor * orig):
            problems.append(f"key {CTX.format(arch=arch)!r}: expected {round(factor * orig)} "
                            f"(= factor {factor} x original_context_length {orig}), got {ctx}")
    return problems
