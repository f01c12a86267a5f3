"""Defer `import torch` in the CLI process until a command first touches torch.

Importing torch costs 2-3 s (more under load), and many commands read only headers and
configs: `formats`, `config`, `yarn`, `inspect` of safetensors/GGUF, every `--dry-run`.
`defer("torch")` puts a stand-in module in `sys.modules`; every `import torch` in the
library binds to it at no cost, and the first attribute read on it (`torch.bfloat16`,
`torch.load`, `import torch.nn`) imports the real torch and forwards to it from then on.

Only the CLI calls this, once, at the start of its own process: a program that imports
`ling_convert.api` gets the real torch at import time, as usual. Worker processes forked
from the CLI inherit the stand-in and import the real torch on their first tensor.

Code on a header-only path must therefore not read a torch attribute, not even at module
level: tensor dtypes travel as safetensors codes (`core/source.py`, `TensorInfo.code`) and
become torch dtypes (`torch_dtype`) only where a tensor is made.

    >>> defer("torch"); import torch; loaded("torch")   # doctest: +SKIP
    False
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types

_LOCK = threading.RLock()


class _Deferred(types.ModuleType):
    """Stands in for a module until its first attribute read, then forwards every read."""

    def __init__(self, name: str, spec):
        super().__init__(name)
        # The import system reads __spec__ of a module already in sys.modules; the real spec (or
        # None, for a submodule whose spec cannot be found without importing its parent)
        # answers without loading anything.
        self.__spec__ = spec
        self.__ling_real__ = None

    def __getattr__(self, attr: str):
        # Reached only for names this stand-in lacks: every attribute of the real module.
        if self.__dict__.get("__ling_real__") is None:
            # `import torch.nn.functional as F` walks torch -> nn -> functional by attribute:
            # a deferred submodule answers as itself.
            sub = sys.modules.get(f"{self.__name__}.{attr}")
            if isinstance(sub, _Deferred):
                return sub
        return getattr(_load(self), attr)

    def __dir__(self):
        return dir(_load(self))


def _load(stub: _Deferred) -> types.ModuleType:
    real = stub.__dict__.get("__ling_real__")
    if real is not None:
        return real
    with _LOCK:
        real = stub.__dict__.get("__ling_real__")
        if real is None:
            # Every stand-in of this package leaves sys.modules, so the import below (and any
            # later one) finds and runs the real modules.
            root = stub.__name__.partition(".")[0]
            for n, m in list(sys.modules.items()):
                if isinstance(m, _Deferred) and (n == root or n.startswith(root + ".")):
                    del sys.modules[n]
            real = importlib.import_module(stub.__name__)
            stub.__dict__["__ling_real__"] = real
    return real


def defer(name: str, *submodules: str) -> bool:
    """Put deferred stand-ins for module `name` (and for `name.sub` of each of `submodules`, which
    library modules import by dotted name) in sys.modules; False where `name` is already imported
    or not installed (then nothing changes)."""
    if name in sys.modules:
        return False
    spec = importlib.util.find_spec(name)
    if spec is None:
        return False
    sys.modules[name] = _Deferred(name, spec)
    for sub in submodules:
        sys.modules[f"{name}.{sub}"] = _Deferred(f"{name}.{sub}", None)
    return True


def loaded(name: str) -> bool:
    """Whether the real module `name` has been imported (a stand-in does not count)."""
    mod = sys.modules.get(name)
    return mod is not None and not (isinstance(mod, _Deferred) and mod.__dict__.get("__ling_real__") is None)
