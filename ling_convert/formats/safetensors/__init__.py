"""HF safetensors (bf16/fp16/fp32, unquantized): a format node, single file or sharded.

header.py parses and checks headers, reader.py opens lazily, writer.py streams shards.
"""

from __future__ import annotations

from pathlib import Path

from .. import Format, register
from ...core.fastio import pread_flat
from ...core.output import parse_size
from .header import INDEX, MAX_HEADER, SINGLE, Entry, read_header, read_names, read_tensor
from .reader import FileSlice, detect, open_source, read_index, shard_files
from .writer import (disk_order, header_bytes, iter_shard_plan, plan_shards, shard_names, tensor_bytes, tensor_maker,
                     write_index, write_shard, write_shard_unsynced, write_tensors, _ShardOut)

__all__ = ["INDEX", "MAX_HEADER", "SINGLE", "Entry", "FileSlice", "detect", "disk_order", "header_bytes",
           "iter_shard_plan", "open_source", "parse_size", "plan_shards", "pread_flat", "read_header", "read_index", "read_names",
           "read_tensor",
           "shard_files", "shard_names", "tensor_bytes", "tensor_maker", "write_index", "write_shard",
           "write_shard_unsynced",
           "write_tensors", "_ShardOut"]


def _detect(path: Path) -> bool:
    # FP8 and MindIE dirs are safetensors too; they register with lower priority numbers.
    return detect(path)


def _open(path: Path):
    return open_source(path, "safetensors")


def _write(src, out, opts):
    # NOTE: formats/writer.py imports this package; importing it at the top would make a cycle.
    from ..writer import write_hf_dir
    return write_hf_dir(src, out, opts)


FORMAT = register(Format("safetensors", "HF safetensors (bf16/fp16/fp32), single or sharded",
                         _detect, _open, _write, priority=60))
