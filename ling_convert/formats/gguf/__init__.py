"""llama.cpp GGUF: reader.py, meta.py (key/value metadata), writer.py, config.py (config rewrites)."""

from __future__ import annotations

from .. import Format, register
from .writer import GgufOptions, write_gguf
from .reader import detect, open_gguf



FORMAT = register(Format("gguf", "llama.cpp GGUF (bailingmoe, bailingmoe2): f32/f16/bf16/q8_0/q4_0, split files",
                         detect, open_gguf, write_gguf, priority=20, options=GgufOptions))
