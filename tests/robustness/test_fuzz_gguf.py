"""Property test: mutated bytes of a small valid GGUF, through the project's GGUF reader and the paths
users take (open, from-gguf mapping, tensor reads, config show/validate), give a typed one-line error
or a valid parse, never another exception.

Mutations: random bytes over the header/KV/tensor-info region, structured overwrites of its integer
fields (counts, value types, string lengths, dims, tensor types and offsets), and truncation.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ling_convert import api
from ling_convert.formats.gguf import config as config_gguf
from ling_convert.api import to_gguf_file
from ling_convert.core.errors import LingConvertError
from ling_convert.formats.gguf.reader import open_gguf
from ling_convert.testing import write_tiny

from .corpus_gguf_mindie import gguf_layout

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


class Valid(tuple):
    def __repr__(self) -> str:     # hypothesis prints the arguments of a failing example
        return f"<valid GGUF, {len(self[0])} bytes>"


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> Valid:
    """A q8_0 export of tiny Ling-mini-2 (quantised and f32 tensors, stacked experts, MTP)."""
    root = tmp_path_factory.mktemp("fuzz-gguf")
    to_gguf_file(write_tiny(root / "src", "ling-mini-2"), root / "m.gguf", outtype="q8_0")
    data = (root / "m.gguf").read_bytes()
    return Valid((data, gguf_layout(data)))


def _typed(f: Path, fn):
    """fn() -> its result, or None after a LingConvertError that is one line and names the file."""
    try:
        return fn()
    except LingConvertError as e:
        line = e.one_line()
        assert "\n" not in line and f.name in line, line
        return None


def _exercise(tmp_path: Path, raw: bytes) -> None:
    """Write `raw` as a GGUF and run every reader over it."""
    f = tmp_path / "x.gguf"
    f.write_bytes(raw)
    src = _typed(f, lambda: open_gguf(f))
    if src is not None:        # whatever parses must read within the file's bounds, or say why not
        for name in src.keys():
            t = _typed(f, lambda: src.load(name))
            assert t is None or tuple(t.shape) == src.info(name).shape
        routed = _typed(f, lambda: api.prepare(f, "safetensors")[0])
        if routed is not None:
            for name in list(routed.keys())[:8]:
                _typed(f, lambda: routed.load(name))
    _typed(f, lambda: config_gguf.metadata(f))
    _typed(f, lambda: config_gguf.validate_gguf(f))


FIELDS = {  # layout key -> struct format of the field
    "n_tensors_at": "<Q", "n_kv_at": "<Q", "kv_type_at": "<I", "kv_strlen_at": "<Q",
    "tensor_ndims_at": "<I", "tensor_dim0_at": "<Q", "tensor_type_at": "<I", "tensor_offset_at": "<Q",
}
WIDE = st.one_of(st.integers(0, 40), st.integers(0, 2**64 - 1), st.sampled_from([2**31, 2**32 - 1, 2**63]))


@SETTINGS
@given(st.data())
def test_structured_field_overwrites(tmp_path, valid, data):
    raw, lay = valid
    buf = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from(sorted(FIELDS)))
        spots = lay[key] if isinstance(lay[key], list) else [lay[key]]
        at = data.draw(st.sampled_from(spots))
        fmt = FIELDS[key]
        value = data.draw(WIDE) % (2 ** (8 * struct.calcsize(fmt)))
        struct.pack_into(fmt, buf, at, value)
    _exercise(tmp_path, bytes(buf))


@SETTINGS
@given(st.data())
def test_random_header_bytes(tmp_path, valid, data):
    raw, lay = valid
    buf = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, lay["data_at"] - 1))
        buf[at] = data.draw(st.integers(0, 255))
    _exercise(tmp_path, bytes(buf))


@SETTINGS
@given(st.data())
def test_truncated(tmp_path, valid, data):
    raw, lay = valid
    cut = data.draw(st.one_of(st.integers(0, lay["data_at"] + 64), st.integers(0, len(raw) - 1)))
    _exercise(tmp_path, raw[:cut])


def test_valid_file_parses(tmp_path, valid):
    f = tmp_path / "x.gguf"
    f.write_bytes(valid[0])
    src = open_gguf(f)
    assert len(src.keys()) > 20 and all(src.load(n).shape == src.info(n).shape for n in src.keys())
