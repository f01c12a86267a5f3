"""Typed options: every converter edge and writer declares a frozen dataclass of the options it reads.

A route's options are one object whose class inherits every edge's dataclass (`compose`); edges read
attributes. A mapping or keywords become that object through `build`, which refuses a key no class
declares (a misspelt option is an error, never ignored).

    >>> build(QuantizeOptions, {"tp": 4}).tp             # doctest: +SKIP
    4
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import os
from collections.abc import Mapping
from typing import Any, Callable, Iterable

from .errors import OptionError


def field_defaults(cls: type) -> dict[str, Any]:
    """{name: default} of a frozen options dataclass (every option has a default)."""
    return {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
            for f in dataclasses.fields(cls)}


def changed(opts) -> dict[str, Any]:
    """The options set to something other than their default (what identifies a run for --resume)."""
    if opts is None:
        return {}
    defaults = field_defaults(type(opts))
    return {k: getattr(opts, k) for k, d in defaults.items() if getattr(opts, k) != d}


def as_mapping(given) -> dict[str, Any]:
    """A mapping's items, or the set fields of an options object: plain data that pickles."""
    if given is None:
        return {}
    return dict(given) if isinstance(given, Mapping) else changed(given)


def unknown_option(key: str, known: Iterable[str], where: str) -> OptionError:
    known = sorted(known)
    near = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {near[0]!r}? " if near else ""
    return OptionError(f"unknown option {key!r} {where}",
                       fix=f"{hint}options it reads: {', '.join(known) or 'none'}")


def build(cls: type, given=None, *, where: str = "", **kw):
    """A `cls` from a mapping, another options object (its fields `cls` declares) and keywords.

    A mapping or keyword key `cls` lacks raises OptionError; so does a field of another object that
    `cls` lacks and that is set (not at its default)."""
    known = field_defaults(cls)
    where = where or f"for {cls.__name__}"
    if given is None:
        values = {}
    elif isinstance(given, Mapping):
        values = dict(given)
    else:
        values = {k: v for k, v in vars_of(given).items() if k in known or k in changed(given)}
    values.update(kw)
    for k in values:
        if k not in known:
            raise unknown_option(k, known, where)
    # NOTE: paths travel as str, so a CLI Path and an API str give the same run identity (plan_id).
    return cls(**{k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in values.items()})


def vars_of(opts) -> dict[str, Any]:
    return {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)}


@functools.lru_cache(maxsize=None)
def compose(classes: tuple[type, ...], name: str = "RouteOptions") -> type:
    """One frozen dataclass inheriting every class given (duplicates dropped): a route's options."""
    bases = tuple(dict.fromkeys(c for c in classes if c is not None))
    seen: dict[str, Any] = {}
    for c in bases:
        for k, d in field_defaults(c).items():
            # Two edges reading one key must agree on its default, or the route's object could not.
            assert seen.setdefault(k, d) == d, f"{c.__name__}.{k} default {d!r} != {seen[k]!r}"
    if len(bases) == 1:
        return bases[0]
    return dataclasses.make_dataclass(name, [], bases=bases, frozen=True)


def takes_options(cls: type) -> Callable:
    """API functions: `fn(src, out, options=cls(...) or a mapping, **its fields as keywords, **run keywords)`.

    The function body receives one `cls` in `options`; a keyword that is neither one of its parameters
    nor a field of `cls` raises OptionError (a TypeError)."""
    def deco(fn):
        sig = inspect.signature(fn)
        fields = field_defaults(cls)
        run = {n for n, p in sig.parameters.items() if p.kind == p.KEYWORD_ONLY and n != "options"}

        @functools.wraps(fn)
        def wrapper(*args, options=None, **kw):
            opt_kw = {k: kw.pop(k) for k in list(kw) if k in fields}
            for k in kw:
                if k not in run:
                    raise unknown_option(k, set(fields) | run, f"for {fn.__name__}")
            return fn(*args, options=build(cls, options, where=f"for {fn.__name__}", **opt_kw), **kw)

        extra = [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=d) for k, d in fields.items()
                 if k not in sig.parameters]
        params = [p.replace(default=None) if p.name == "options" else p for p in sig.parameters.values()]
        wrapper.__signature__ = sig.replace(parameters=_ordered(params + extra))
        return wrapper
    return deco


def _ordered(params: list[inspect.Parameter]) -> list[inspect.Parameter]:
    return sorted(params, key=lambda p: p.kind)     # stable: keyword-only after positional, **kw last
