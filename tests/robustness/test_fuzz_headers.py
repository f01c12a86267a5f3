"""Property tests: any byte string fed to the header parsers yields a typed error or a valid parse."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ling_convert.core.errors import LingConvertError
from ling_convert.formats.safetensors import read_header, read_tensor

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _parse(tmp: Path, data: bytes):
    f = tmp / "x.safetensors"
    f.write_bytes(data)
    try:
        entries, _ = read_header(f)
    except LingConvertError as e:
        assert "\n" not in e.one_line() and str(f) in e.one_line()
        return None
    # Whatever parses must be readable within the file's bounds.
    for e in entries.values():
        assert 8 <= e.begin <= e.end <= len(data)
        t = read_tensor(f, e)
        assert tuple(t.shape) == e.info.shape
    return entries


@SETTINGS
@given(st.binary(max_size=512))
def test_random_bytes(tmp_path, data):
    _parse(tmp_path, data)


dtypes = st.sampled_from(["F32", "F16", "BF16", "I8", "U8", "F8_E4M3", "I64", "BOOL", "X9", 3])
shapes = st.lists(st.integers(-2, 6), max_size=3)
offsets = st.lists(st.integers(-4, 200), min_size=0, max_size=3)


@SETTINGS
@given(st.dictionaries(st.text(max_size=8), st.fixed_dictionaries(
    {"dtype": dtypes, "shape": shapes, "data_offsets": offsets}), max_size=4),
    st.integers(0, 256), st.booleans())
def test_structured_headers(tmp_path, header, data_len, bad_utf8):
    raw = json.dumps(header).encode()
    if bad_utf8:
        raw = raw[:1] + b"\xff" + raw[1:]
    data = struct.pack("<Q", len(raw)) + raw + bytes(data_len)
    _parse(tmp_path, data)


@SETTINGS
@given(st.integers(0, 2**64 - 1))
def test_any_declared_header_length(tmp_path, n):
    _parse(tmp_path, struct.pack("<Q", n) + b"{}")


def test_valid_file_parses(tmp_path):
    import torch
    from safetensors.torch import save_file
    save_file({"a": torch.arange(6, dtype=torch.float32).reshape(2, 3)}, str(tmp_path / "v.safetensors"))
    entries = _parse(tmp_path, (tmp_path / "v.safetensors").read_bytes())
    assert entries and entries["a"].info.shape == (2, 3)
