"""The GGUF writer: plan every tensor's type, declare all tensor infos, then stream the data.

Types follow llama.cpp's converter (schemas/gguf/dtype_rules.json). Stacked experts are
written one expert at a time and large tensors in row chunks, so peak memory is one
source tensor plus a chunk, whatever the model size. The output is staged and renamed
into place (single file, or NAME-0000i-of-0000N.gguf with --split-max-size).

    >>> api.convert("Ling-mini-2.0/", "ling-mini.gguf", to="gguf", options={"outtype": "q8_0"})  # doctest: +SKIP
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import gguf
import numpy as np
import torch

from .. import schemas
from ..errors import BadInputError, OutputExistsError, VerificationError
from ..output import StagedOutput
from ..source import Source
from .gguf import QT, SPLIT_RE, _reader
from .gguf_meta import (add_tokenizer, add_values, copy_tokenizer, general_values, metadata_values,
                        refuse_llama_defaults, table_for_config, tokenizer_dir)
from .safetensors import parse_size

CHUNK_ELEMS = 1 << 24   # rows converted at once: bounds quantisation temporaries (~64 MB of float32)


# -- writer: types ----------------------------------------------------------------------------

def resolve_outtype(outtype: str | None, src: Source) -> str:
    rules = schemas.load("gguf/dtype_rules.json")
    outtype = (outtype or "auto").lower()
    if outtype == "auto":
        first = next((i.dtype for i in src.infos.values() if len(i.shape) >= 2), None)
        auto = rules["auto_outtype"]
        return auto.get(str(first).replace("torch.", ""), auto["other"])
    if outtype not in rules["outtypes"]:
        raise BadInputError(f"unknown --outtype {outtype!r}", fix=f"use one of: auto, {', '.join(rules['outtypes'])}")
    return outtype


def plan_type(name: str, shape: tuple[int, ...], outtype: str) -> tuple[QT, str | None]:
    """GGML type for one tensor (llama.cpp's rules, gguf.md 1.8) and why it differs from --outtype."""
    rules = schemas.load("gguf/dtype_rules.json")
    f32 = rules["force_f32"]
    if len(shape) <= f32["ndim_at_most"] or name.endswith(tuple(f32["suffixes"])) \
            or name.split(".", 2)[-1] in f32["names"] or name in f32["names"]:
        return QT.F32, None
    want = QT[rules["outtypes"][outtype]]
    block = gguf.GGML_QUANT_SIZES[want][0]
    if block > 1 and shape[-1] % block:
        fb = QT[rules["fallback"]["type"]]
        return fb, f"row length {shape[-1]} is not a multiple of {want.name}'s block size {block}: {fb.name}"
    return want, None


def type_nbytes(shape: tuple[int, ...], qtype: QT) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape, dtype=np.int64)) // block * size


def _encode(t: torch.Tensor, qtype: QT) -> memoryview:
    """One chunk of rows in GGUF bytes (same rounding as llama.cpp's Python converter)."""
    if qtype == QT.F32:
        t = t.to(torch.float32)
    elif qtype == QT.F16:
        t = t.to(torch.float16)
    elif qtype == QT.BF16:
        t = t.to(torch.bfloat16)   # round-to-nearest-even, as gguf.quants' BF16
    else:
        arr = gguf.quantize(np.ascontiguousarray(t.to(torch.float32).numpy()), qtype)
        return memoryview(np.ascontiguousarray(arr)).cast("B")
    t = t.contiguous().reshape(-1)
    return memoryview(t.view(torch.uint8).numpy()) if t.numel() else memoryview(b"")


def _chunks(src: Source, name: str, qtype: QT) -> Iterator[tuple[memoryview, int]]:
    """(GGUF bytes, source bytes consumed) per row chunk; a stacked tensor one expert at a time."""
    for th in getattr(src, "parts", {}).get(name) or [lambda: src.load(name)]:
        t = th()
        rows = t.reshape(-1, t.shape[-1]) if t.dim() > 1 else t.reshape(1, -1)
        step = max(1, CHUNK_ELEMS // max(1, rows.shape[1]))
        for i in range(0, rows.shape[0], step):
            chunk = rows[i:i + step]
            yield _encode(chunk, qtype), chunk.numel() * chunk.element_size()
        del t, rows


# -- writer: files ----------------------------------------------------------------------------

def _pad(f, h, n: int, align: int) -> None:
    pad = (-n) % align
    if pad:
        f.write(b"\0" * pad)
        h.update(b"\0" * pad)


_END = object()


def _ahead(items: Iterator):
    """Make the next item in a worker thread while the caller uses this one (two in flight at most)."""
    with ThreadPoolExecutor(1) as pool:
        nxt = pool.submit(next, items, _END)
        while (item := nxt.result()) is not _END:
            nxt = pool.submit(next, items, _END)
            yield item


def _stream(writer: gguf.GGUFWriter, files: list[Path], src: Source, plan: dict, progress) -> list[str]:
    """Write every tensor's bytes after the header; returns each file's sha256.

    Reading+encoding the next chunk, hashing this one and writing it overlap (all release the GIL)."""
    align, shas = writer.data_alignment, []
    with ThreadPoolExecutor(1) as hasher:
        for f, path, tensors in zip(writer.fout, files, writer.tensors):
            f.flush()
            with open(path, "rb") as head:   # header, KV and tensor infos: small, already on disk
                h = hashlib.sha256(head.read(f.tell()))
            _pad(f, h, f.tell(), align)
            chunks = ((n, d, c) for n in tensors for d, c in _chunks(src, n, plan[n][0]))
            written = dict.fromkeys(tensors, 0)
            for name, data, consumed in _ahead(chunks):
                job = hasher.submit(h.update, data)
                f.write(data)
                job.result()
                written[name] += len(data)
                if progress:
                    progress(consumed)
                if written[name] == tensors[name].nbytes:
                    _pad(f, h, written[name], align)
            bad = next((n for n in tensors if written[n] != tensors[n].nbytes), None)
            if bad:
                raise VerificationError(f"wrote {written[bad]} bytes, declared {tensors[bad].nbytes}", path=path,
                                        tensor=bad, fix="this is a bug in ling-convert; please report it")
            f.flush()
            os.fsync(f.fileno())
            shas.append(h.hexdigest())
    return shas


def _check_written(files: list[Path], plan: dict) -> None:
    """Reopen every file: the tensor set, shapes and types must be the plan."""
    seen = {}
    for p in files:
        for t in _reader(p).tensors:
            seen[t.name] = (QT(t.tensor_type), tuple(int(d) for d in reversed(t.shape.tolist())))
    want = {n: (q, s) for n, (q, _, s) in plan.items()}
    if seen != want:
        bad = sorted(set(seen) ^ set(want)) or sorted(n for n in want if seen[n] != want[n])
        raise VerificationError("written GGUF does not match the plan", path=files[0], tensor=bad[0],
                                fix="this is a bug in ling-convert; please report it")


def write_gguf(src: Source, out: Path, opts) -> Path:
    """Write `src` (GGUF names) as one GGUF file, or split files with --split-max-size."""
    extra, out = opts.extra, Path(out)
    cfg = src.config or {}
    table = table_for_config(cfg, src.path)
    check_names(src, table)
    outtype = resolve_outtype(extra.get("outtype"), src)
    plan = {n: (*plan_type(n, i.shape, outtype), i.shape) for n, i in src.infos.items()}
    from_gguf = getattr(src, "source_format", src.format) == "gguf" and not src.route and not extra.get("tokenizer_dir")
    if from_gguf:
        refuse_llama_defaults(src, extra.get("llama_defaults"))
    tok = None if from_gguf else tokenizer_dir(src.aux, extra.get("tokenizer_dir"), src.path)
    split = parse_size(extra["split_max_size"]) if extra.get("split_max_size") else 0
    writer = gguf.GGUFWriter(None, table["gguf_arch"], split_max_size=split)
    rules = schemas.load("gguf/dtype_rules.json")
    file_type = gguf.LlamaFileType[rules["file_type"][rules["outtypes"][outtype]]]
    name = Path(str(cfg.get("_name_or_path") or src.path)).name
    # the embedded config is the one read from the source; the keys carry what changed (norm_head, MTP)
    embedded = src.original_config or cfg
    add_values(writer, general_values(embedded, name, file_type) + metadata_values(cfg, table, src.path))
    tok_summary = copy_tokenizer(writer, src.path) if from_gguf else add_tokenizer(writer, tok, table,
                                                                                  int(cfg["vocab_size"]))
    for n, (qt, _, shape) in plan.items():
        writer.add_tensor_info(n, shape, np.dtype(np.float32), type_nbytes(shape, qt), raw_dtype=qt)
    names = [p.name for p in writer.format_shard_names(out)]
    old = _split_set(out)
    if old and not opts.force and not _left_by_killed_commit(old, names):
        raise OutputExistsError(f"split GGUF output already exists ({len(old)} file(s) named "
                                f"{out.stem}-*-of-*.gguf)", path=old[0],
                                fix="choose a new output path or pass --force to replace them")
    with StagedOutput(out, force=opts.force, single_file=True) as staged:
        try:
            writer.write_header_to_file(staged.path(out.name))
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            files = [staged.path(n) for n in names]
            shas = _stream(writer, files, src, plan, opts.progress)
        finally:
            writer.close()
        _check_written(files, plan)
        for n, sha in zip(names, shas):
            staged.done(n, sha)
        done = staged.commit(_manifest(src, table, outtype, plan, names, tok_summary))
    for p in old:  # --force: shards of an earlier, differently split export would mix with the new set
        if p.name not in names:
            p.unlink(missing_ok=True)
    return done


def check_names(src: Source, table) -> None:
    """Every tensor is a GGUF name of this arch, groups are whole, and blk.N stops at block_count."""
    from ..converters.gguf import group_names
    groups = group_names(src.keys(), _rules(table), "gguf", table["gguf_arch"], src.path)
    for g in groups:
        if len(g.slots) != len(g.rule.gguf):
            missing = next(g.fmt(p) for i, p in enumerate(g.rule.gguf) if i not in g.slots)
            raise BadInputError("a tensor of a group is missing", path=src.path, tensor=missing,
                                fix="the source is incomplete")
    cfg = src.config or {}
    blocks = int(cfg["num_hidden_layers"]) + int(cfg.get("num_nextn_predict_layers") or 0)
    top = max((g.layer for g in groups if g.layer is not None), default=-1) + 1
    if top != blocks:
        raise BadInputError(f"tensors cover {top} blocks but block_count would be {blocks} (llama.cpp refuses a "
                            "tensor count that does not match)", path=src.path,
                            fix="check num_hidden_layers and num_nextn_predict_layers in config.json")


def _rules(table):
    from ..converters.gguf import rules
    return rules(table)


def _left_by_killed_commit(old: list[Path], names: list[str]) -> bool:
    """Later splits of the very set this run writes, without its first file: a run killed while
    renaming its files into place (the first goes last). The commit replaces them only if they
    hold the same bytes; anything else still needs --force."""
    return len(names) > 1 and names[0] not in {p.name for p in old} and {p.name for p in old} <= set(names)


def _split_set(out: Path) -> list[Path]:
    """Existing `{stem}-0000i-of-0000N.gguf` files beside OUT (any N)."""
    return sorted(p for p in out.parent.glob(f"{glob.escape(out.stem)}-*-of-*.gguf")
                  if SPLIT_RE.search(p.name) and p.name[: SPLIT_RE.search(p.name).start()] == out.stem)


def _manifest(src: Source, table, outtype: str, plan: dict, names: list[str], tok: dict) -> dict:
    from ..writer import manifest_for
    types = Counter(q.name for q, _, _ in plan.values())
    return manifest_for(src, "gguf", {
        "gguf": {"arch": table["gguf_arch"], "outtype": outtype, "files": names, "tensor_types": dict(types),
                 "fallbacks": {n: why for n, (_, why, _) in plan.items() if why}, "tokenizer": tok,
                 "metadata_keys": [k for k, _, _ in metadata_values(src.config, table)]}})
