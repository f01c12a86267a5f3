"""torch DCP / Megatron torch_dist checkpoints: reader.py (metadata, lazy tensors), unpickle.py
(restricted unpickler), writer.py, megatron_config.py (Megatron args <-> HF config)."""

from __future__ import annotations

from .. import Format, register
from .writer import write_dcp
from .reader import detect, open_dcp



FORMAT = register(Format("dcp", "torch DCP / Megatron torch_dist checkpoint (.metadata + __*_*.distcp)",
                         detect, open_dcp, write_dcp, priority=40))
