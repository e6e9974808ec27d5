"""Typed, range-checked dataclass fields: the one definition of every configuration key.

A field declared with :func:`option` carries its default, its accepted values (``choices``, or an
inclusive ``lo``/``hi`` range, ``lo`` open with ``lo_open``) and a help text. :func:`check_option`
validates a value against it with one :class:`~ancra.errors.UserError` naming the key and what is
valid; the config sections (:mod:`ancra.config`) and :class:`ancra.objectives.Objective` both
declare their fields this way, so a default or a range is written once.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, Field, field
from typing import Any

from .errors import UserError

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list"}


def option(default, *, choices=None, lo=None, hi=None, lo_open=False, types=None, help=""):
    """A dataclass field with validation metadata (``types``: the accepted types when there are
    several, e.g. ``"auto"`` or a bool; by default the type of ``default``)."""
    kw = {"default_factory": lambda: list(default)} if isinstance(default, list) else {"default": default}
    return field(
        metadata={"choices": choices, "lo": lo, "hi": hi, "lo_open": lo_open, "types": types, "help": help}, **kw
    )


def default_of(f: Field):
    return f.default if f.default is not MISSING else f.default_factory()


def _shown(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def check_option(key: str, f: Field, value: Any, *, unknown: str | None = None) -> Any:
    """``value`` for the field ``f`` (ints widened to float where a float is expected), or a
    :class:`UserError` naming ``key``. A value outside ``choices`` reads
    ``"{key} = 'x' is not valid: choose one of ..."``, or ``"unknown {unknown} 'x': ..."`` when
    ``unknown`` names what the value is (Python callers: ``unknown method 'fgsm_at'``)."""
    meta = f.metadata
    expected = type(default_of(f))
    hint = f" ({meta['help']})" if meta.get("help") else ""
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if expected is list and isinstance(value, tuple):
        value = list(value)
    types = meta.get("types") or (expected,)
    if type(value) not in types:
        raise UserError(f"{key} must be {' or '.join(_TYPE_NAMES[t] for t in types)}, got {value!r}{hint}")
    if expected is float and not math.isfinite(value):
        raise UserError(f"{key} must be a finite number, got {value!r}")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        valid = ", ".join(_shown(c) for c in choices)
        if unknown:
            raise UserError(f"unknown {unknown} {value!r}: choose one of {valid}")
        raise UserError(f"{key} = {value!r} is not valid: choose one of {valid}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value <= lo if meta.get("lo_open") else value < lo):
        raise UserError(f"{key} = {value!r} is out of range: must be {'>' if meta.get('lo_open') else '>='} {lo}{hint}")
    if hi is not None and value > hi:
        raise UserError(f"{key} = {value!r} is out of range: must be <= {hi}{hint}")
    return value
