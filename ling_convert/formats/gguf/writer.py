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
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import gguf
import numpy as np

from ...core import fastio, schemas
from ...core.errors import BadInputError, OutputExistsError, VerificationError
from ...core.output import StagedOutput
from ...core.source import Source
from ...model.config import ModelConfig
from ..safetensors import parse_size
from .meta import (
    add_tokenizer,
    add_values,
    copy_tokenizer,
    general_values,
    metadata_values,
    refuse_llama_defaults,
    table_for_config,
    tokenizer_dir,
)
from . import fill as gguf_fill
from .encode import CHUNK_ELEMS, encoded_rows, part_thunks
from .reader import QT, SPLIT_RE, _reader
from .table import group_names, rules


@dataclass(frozen=True)
class GgufOptions:
    """to-gguf and the GGUF writer (a GGUF source is re-quantised with an empty route)."""
    outtype: str = "auto"
    split_max_size: str | int | None = None
    no_mtp: bool = False
    llama_defaults: bool = False
    tokenizer_dir: str | None = None

CHECKPOINT_BYTES = 1 << 30   # written between durable checkpoints a killed run can --resume from


def checkpoint_bytes() -> int:
    # NOTE: the variable only exists so tests can checkpoint tiny files; read per run, not at import.
    return int(os.environ.get("LING_CONVERT_CHECKPOINT_BYTES") or CHECKPOINT_BYTES)


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
    """GGML type for one tensor (llama.cpp's rules) and why it differs from --outtype."""
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


def _chunks(src: Source, name: str, qtype: QT) -> Iterator[tuple[memoryview, int]]:
    """(GGUF bytes, source bytes consumed) per row chunk; a stacked tensor one expert at a time."""
    for th in part_thunks(src, name):
        yield from encoded_rows(th(), qtype)


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


def _stream(writer: gguf.GGUFWriter, files: list[Path], src: Source, plan: dict, progress,
            staged: StagedOutput | None = None, prev: dict | None = None, fill=None) -> list[str]:
    """Write every tensor's bytes after the header; returns each file's sha256.

    Reading+encoding the next chunk, hashing this one and writing it overlap (all release the GIL).
    With `prev` (--resume), tensors a killed run had durably written are copied from its file
    instead of encoded again; every `checkpoint_bytes()` the file is fsynced and its length recorded.
    With `fill` (a FillPool), worker processes encode and write the tensors (fill.py)."""
    align, shas, prev, every = writer.data_alignment, [], prev or {}, checkpoint_bytes()
    with ThreadPoolExecutor(1) as hasher:
        for f, path, tensors in zip(writer.fout, files, writer.tensors):
            f.flush()
            with open(path, "rb") as head:   # header, KV and tensor infos: small, already on disk
                header = head.read(f.tell())
            h = hashlib.sha256(header)
            _pad(f, h, f.tell(), align)
            old = _Previous.open(prev.get(path.name), header, f.tell())
            if fill is not None:
                saved = [f.tell()]

                def checkpoint():
                    if staged is not None and f.tell() - saved[0] >= every and f.tell() >= old.end:
                        saved[0] = _checkpoint(staged, f, path, h, old)
                gguf_fill.fill_file(fill, f, path, tensors, src, plan, h, old, align, progress, checkpoint)
                shas.append(_finish(staged, f, path, h, old))
                continue
            chunks = ((n, d, c) for n in tensors
                      for d, c in (old.chunks(tensors[n].nbytes, align, src.infos[n].nbytes)
                                   or _chunks(src, n, plan[n][0])))
            written, saved = dict.fromkeys(tensors, 0), f.tell()
            for name, data, consumed in _ahead(chunks):
                job = hasher.submit(h.update, data)
                f.write(data)
                job.result()
                written[name] += len(data)
                if progress:
                    progress(consumed)
                if written[name] == tensors[name].nbytes:
                    _pad(f, h, written[name], align)
                    if staged is not None and f.tell() - saved >= every and f.tell() >= old.end:
                        saved = _checkpoint(staged, f, path, h, old)
            bad = next((n for n in tensors if written[n] != tensors[n].nbytes), None)
            if bad:
                raise VerificationError(f"wrote {written[bad]} bytes, declared {tensors[bad].nbytes}", path=path,
                                        tensor=bad, fix="this is a bug in ling-convert; please report it")
            shas.append(_finish(staged, f, path, h, old))
    return shas


def _finish(staged: StagedOutput | None, f, path: Path, h, old: "_Previous") -> str:
    if staged is not None:      # a later split file may still be killed: keep this one
        _checkpoint(staged, f, path, h, old)
    else:
        f.flush()
        os.fsync(f.fileno())
    return h.hexdigest()


# -- writer: --resume ----------------------------------------------------------------------------
# A checkpoint says: the first `end` bytes of `file` (in the staging dir) are durable, belong to this
# plan and hash to `sha256`. A resumed run renames that file aside (`.prev`), writes the header
# afresh, and copies whole tensors from the old file up to `end`; nothing is reused unless the
# header is byte-identical and the prefix still has its hash. Until the new file passes `end`, the
# checkpoint keeps naming the `.prev` file.

def _checkpoint(staged: StagedOutput, f, path: Path, h, old: "_Previous") -> int:
    f.flush()
    os.fsync(f.fileno())
    staged.checkpoint(path.name, {"file": path.name, "end": f.tell(), "sha256": h.hexdigest()})
    old.drop()
    return f.tell()


def set_aside(staged: StagedOutput, names: list[str]) -> dict[str, tuple[Path, int, str]]:
    """Files a killed run checkpointed: name -> (its data, renamed to NAME.prev; durable length; its sha256)."""
    found = {}
    for name in names:
        cp = staged.resumed_partial(name)
        if not (isinstance(cp, dict) and isinstance(cp.get("end"), int) and isinstance(cp.get("file"), str)
                and isinstance(cp.get("sha256"), str)):
            continue
        data, aside = staged.staging / Path(cp["file"]).name, staged.staging / f"{name}.prev"
        if not (data.is_file() and data.stat().st_size >= cp["end"]):
            continue
        if data != aside:     # record first: killed between the two, the checkpoint names a missing file
            staged.checkpoint(name, {**cp, "file": aside.name})
            os.replace(data, aside)
        else:
            staged.checkpoint(name, cp)
        found[name] = (aside, cp["end"], cp["sha256"])
    return found


def _prefix_sha256(path: Path, n: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        fastio.hash_range(h, f.fileno(), 0, n, bytearray(min(n, fastio.BUF)))
    return h.hexdigest()


class _Previous:
    """The set-aside file of a killed run, read tensor by tensor while the new file catches up."""

    def __init__(self, path: Path | None = None, end: int = 0, pos: int = 0):
        self.path, self.end, self.pos = path, end, pos

    @classmethod
    def open(cls, found: tuple[Path, int, str] | None, header: bytes, data_start: int) -> "_Previous":
        if found is None:
            return cls()
        path, end, sha = found
        with open(path, "rb") as old:
            same = old.read(len(header)) == header      # same plan, tokenizer and metadata
        if not same or end < data_start or _prefix_sha256(path, end) != sha:
            path.unlink(missing_ok=True)
            return cls()
        return cls(path, end, data_start)

    def chunks(self, nbytes: int, align: int, consumed: int):
        """The next tensor's bytes from the old file when it lies wholly before `end`, else None."""
        start = self.reuse(nbytes, align)
        return None if start is None else self._read(start, nbytes, consumed)

    def reuse(self, nbytes: int, align: int) -> int | None:
        """Where the next tensor lies in the old file when wholly before `end`, else None (and from
        then on: tensors are reused in order, only up to the first one that was not durable)."""
        if self.path is None or self.pos + nbytes > self.end:
            self.pos = self.end + 1         # nothing after the first miss is taken from the old file
            return None
        start, self.pos = self.pos, self.pos + nbytes + (-nbytes) % align
        return start

    def _read(self, start: int, nbytes: int, consumed: int):
        step = CHUNK_ELEMS * 4
        with open(self.path, "rb") as old:
            for off in range(start, start + nbytes, step):
                old.seek(off)
                data = old.read(min(step, start + nbytes - off))
                if not data:
                    raise VerificationError("the set-aside file of the killed run ends early", path=self.path,
                                            fix="run again without --resume")
                yield memoryview(data), consumed if off == start else 0

    def drop(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path, self.end = None, 0


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
    o, out = opts.options or GgufOptions(), Path(out)
    cfg = src.config or {}
    table = table_for_config(cfg, src.path)
    check_names(src, table)
    outtype = resolve_outtype(o.outtype, src)
    plan = {n: (*plan_type(n, i.shape, outtype), i.shape) for n, i in src.infos.items()}
    from_gguf = getattr(src, "source_format", src.format) == "gguf" and not src.route and not o.tokenizer_dir
    if from_gguf:
        refuse_llama_defaults(src, o.llama_defaults)
    tok = None if from_gguf else tokenizer_dir(src.aux, o.tokenizer_dir, src.path)
    split = parse_size(o.split_max_size) if o.split_max_size else 0
    writer = gguf.GGUFWriter(None, table["gguf_arch"], split_max_size=split)
    rules = schemas.load("gguf/dtype_rules.json")
    file_type = gguf.LlamaFileType[rules["file_type"][rules["outtypes"][outtype]]]
    name = Path(str(cfg.get("_name_or_path") or src.path)).name
    # the embedded config is the one read from the source; the keys carry what changed (norm_head, MTP)
    embedded = src.original_config or cfg
    add_values(writer, general_values(embedded, name, file_type) + metadata_values(cfg, table, src.path))
    tok_summary = copy_tokenizer(writer, src.path) if from_gguf else add_tokenizer(writer, tok, table,
                                                                                  ModelConfig.of(cfg).vocab_size)
    for n, (qt, _, shape) in plan.items():
        writer.add_tensor_info(n, shape, np.dtype(np.float32), type_nbytes(shape, qt), raw_dtype=qt)
    names = [p.name for p in writer.format_shard_names(out)]
    old = _split_set(out)
    if old and not opts.force and not _left_by_killed_commit(old, names):
        raise OutputExistsError(f"split GGUF output already exists ({len(old)} file(s) named "
                                f"{out.stem}-*-of-*.gguf)", path=old[0],
                                fix="choose a new output path or pass --force to replace them")
    from ..writer import plan_id
    with StagedOutput(out, sources=src.inputs(), force=opts.force, single_file=True, resume=opts.resume,
                      plan_id=plan_id(src, opts, "gguf")) as staged:
        prev = set_aside(staged, names)
        try:
            writer.write_header_to_file(staged.path(out.name))
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            files = [staged.path(n) for n in names]
            with gguf_fill.pool(src, plan, opts.workers) as fill:
                shas = _stream(writer, files, src, plan, opts.progress, staged, prev, fill)
        finally:
            writer.close()
            for path, _, _ in prev.values():
                path.unlink(missing_ok=True)
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
    groups = group_names(src.keys(), _rules(table), "gguf", table["gguf_arch"], src.path)
    for g in groups:
        if len(g.slots) != len(g.rule.gguf):
            missing = next(g.fmt(p) for i, p in enumerate(g.rule.gguf) if i not in g.slots)
            raise BadInputError("a tensor of a group is missing", path=src.path, tensor=missing,
                                fix="the source is incomplete")
    cfg = src.config or {}
    mc = ModelConfig.of(cfg)
    blocks = mc.num_hidden_layers + mc.mtp_layers
    top = max((g.layer for g in groups if g.layer is not None), default=-1) + 1
    if top != blocks:
        raise BadInputError(f"tensors cover {top} blocks but block_count would be {blocks} (llama.cpp refuses a "
                            "tensor count that does not match)", path=src.path,
                            fix="check num_hidden_layers and num_nextn_predict_layers in config.json")


def _rules(table):
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
