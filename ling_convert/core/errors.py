"""One error hierarchy. The CLI maps each to a one-line message and an exit code."""

from __future__ import annotations

from pathlib import Path


class LingConvertError(Exception):
    """Base: a problem the user can fix. `str()` is one line: where, what, fix."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | Path | None = None,
                 tensor: str | None = None, fix: str | None = None):
        self.message = message
        self.path = str(path) if path is not None else None
        self.tensor = tensor
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = ": ".join(x for x in (self.path, self.tensor and f"tensor {self.tensor!r}") if x)
        text = f"{where}: {self.message}" if where else self.message
        if self.fix:
            text += f" (fix: {self.fix})"
        # NOTE: messages must stay single-line whatever the payload (file names may hold newlines).
        return " ".join(text.split())

    def __reduce__(self):
        # Pickles with its fields (Exception's default keeps only str()), so errors cross process pools as-is.
        return (_rebuild, (type(self), self.message, self.path, self.tensor, self.fix, dict(self.__dict__)))


def _rebuild(cls, message, path, tensor, fix, state):
    e = cls(message, path=path, tensor=tensor, fix=fix)
    e.__dict__.update(state)
    return e


class BadInputError(LingConvertError):
    """Malformed or inconsistent input file."""


class CorruptFileError(BadInputError):
    """A file's bytes disagree with its own header (truncated, overlapping, past EOF)."""


class MissingShardError(BadInputError):
    """An index names a shard that is not there."""


class UnsafePathError(BadInputError):
    """A path from an input (index, hub listing) tries to leave its directory."""


class UnsafePickleError(BadInputError):
    """A pickle asks for a global outside the allow-list; it was not executed."""


class UnknownArchitectureError(BadInputError):
    """config.json names an architecture this tool does not know."""


class UnknownTensorError(BadInputError):
    """A tensor name no mapping table covers, or a required tensor is absent."""


class ScaleMissingError(BadInputError):
    """An FP8 weight without its scale, or a scale without its weight."""


class ConfigSchemaError(BadInputError):
    """config.json fails its schema."""


class OptionError(BadInputError, TypeError):
    """An option no edge of the route (or no keyword of the API function) reads: a misspelt key."""


class UnsupportedError(LingConvertError):
    """Valid input that the requested target cannot represent."""


class RouteNotFoundError(LingConvertError):
    """No chain of converters joins the source format to the target format."""


class OutputExistsError(LingConvertError):
    """The output exists and is not empty; --force replaces it."""


class OutputIsSourceError(LingConvertError):
    """The output is, lies inside, or holds a checkpoint the run reads (never allowed, --force included)."""


class OutputBusyError(LingConvertError):
    """Another ling-convert run holds the output's lock."""


class WriteFailedError(LingConvertError):
    """The output could not be written (disk full, file-size limit, permissions)."""


class HubError(LingConvertError):
    """A Hub or ModelScope request failed after retries."""


class VerificationError(LingConvertError):
    """Two checkpoints disagree beyond tolerance."""

    exit_code = 1
