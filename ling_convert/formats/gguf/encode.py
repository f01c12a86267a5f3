"""Tensors to GGUF bytes, a chunk of rows at a time; shared by the one-process writer and the workers.

    >>> b"".join(d for d, _ in encoded_rows(torch.ones(2, 32), QT.F16)) == torch.ones(64).half().numpy().tobytes()
    True
"""

from __future__ import annotations

from typing import Iterator

import gguf
import numpy as np
import torch

from ...core.source import Source
from .reader import QT

CHUNK_ELEMS = 1 << 24   # rows converted at once: bounds quantisation temporaries (~64 MB of float32)


def encode(t: torch.Tensor, qtype: QT) -> memoryview:
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


def part_thunks(src: Source, name: str) -> list:
    """What a tensor is read as: one thunk per stacked expert, else one for the whole tensor."""
    return getattr(src, "parts", {}).get(name) or [lambda: src.load(name)]


def encoded_rows(t: torch.Tensor, qtype: QT) -> Iterator[tuple[memoryview, int]]:
    """(GGUF bytes, source bytes) of `t`, a chunk of rows at a time (bounds the temporaries)."""
    rows = t.reshape(-1, t.shape[-1]) if t.dim() > 1 else t.reshape(1, -1)
    step = max(1, CHUNK_ELEMS // max(1, rows.shape[1]))
    for i in range(0, rows.shape[0], step):
        chunk = rows[i:i + step]
        yield encode(chunk, qtype), chunk.numel() * chunk.element_size()
