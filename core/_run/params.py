"""Turning a framework's hyperparameters into MLflow params: flat keys, short string values."""

from __future__ import annotations

import argparse
import dataclasses
import enum
import functools
import inspect
import re
from collections.abc import Mapping
from typing import Any

from aidp_metrics._metric import sanitize_key

MAX_PARAM_VALUE_LENGTH = 6000
MAX_PARAM_KEY_LENGTH = 250
_TRUNCATION_MARK = "...[truncated]"


def flatten_params(params: object, *, separator: str = "/") -> dict[str, str]:
    """Flatten nested mappings, Namespaces and dataclasses into `{path: string}`.

    Keys are joined with `separator` and made valid; values are written the way a person
    reads them (classes and functions by qualified name, never `<function ... at 0x...>`)
    and cut to the server's 6000-character limit.
    """
    flat: dict[str, str] = {}
    _flatten(_as_mapping(params), "", separator, flat)
    return flat


def _as_mapping(params: object) -> Mapping[str, Any]:
    if params is None:
        return {}
    if isinstance(params, Mapping):
        return params
    if isinstance(params, argparse.Namespace):
        return vars(params)
    if dataclasses.is_dataclass(params) and not isinstance(params, type):
        return {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    to_dict = getattr(params, "to_dict", None)
    if callable(to_dict):
        as_dict = to_dict()
        if isinstance(as_dict, Mapping):
            return as_dict
    raise TypeError(f"params must be a mapping or argparse.Namespace, got {type(params).__name__}")


def _flatten(params: Mapping[Any, Any], prefix: str, separator: str, out: dict[str, str]) -> None:
    for raw_key, value in params.items():
        key = f"{prefix}{separator}{raw_key}" if prefix else str(raw_key)
        nested = _nested_mapping(value)
        if nested is not None and nested:
            _flatten(nested, key, separator, out)
            continue
        out[sanitize_key(key[:MAX_PARAM_KEY_LENGTH])] = param_value(value)


def _nested_mapping(value: object) -> Mapping[Any, Any] | None:
    if isinstance(value, Mapping):
        return value
    if isinstance(value, argparse.Namespace):
        return vars(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return None


def param_value(value: object) -> str:
    """One param value as a string of at most 6000 characters."""
    text = _describe(value)
    if len(text) > MAX_PARAM_VALUE_LENGTH:
        text = text[: MAX_PARAM_VALUE_LENGTH - len(_TRUNCATION_MARK)] + _TRUNCATION_MARK
    return text


def _describe(value: object) -> str:
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, (bool, int, float)):
        return str(value)
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, functools.partial):
        arguments = [_describe(value.func)]
        arguments += [_describe_item(arg) for arg in value.args]
        arguments += [f"{key}={_describe_item(arg)}" for key, arg in value.keywords.items()]
        return f"functools.partial({', '.join(arguments)})"
    if inspect.isclass(value) or inspect.isroutine(value):
        return _qualified_name(value)
    scalar = _scalar(value)
    if scalar is not None:
        # numpy prints float32(0.1) as 0.1; its .item() would print 0.10000000149011612
        return str(value) if type(value).__module__ == "numpy" else str(scalar)
    if isinstance(value, tuple):
        return str(tuple(_plain(v) for v in value))
    if isinstance(value, (list, set, frozenset)):
        return str([_plain(v) for v in value])
    text = str(value)
    if _MEMORY_ADDRESS.search(text) is None:
        return text
    return _describe_object(value)


# `<foo.Bar object at 0x7f...>`: the default repr, different in every run.
_MEMORY_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_MAX_ATTRIBUTES = 8  # an object with more public attributes is named, not spelt out


def _describe_object(value: object) -> str:
    """An object whose text holds a memory address: its class's qualified name, with its
    public attributes when they are few and plain (`pkg.Scheduler(gamma=0.5)`)."""
    name = _qualified_name(type(value))
    try:
        attributes = {k: v for k, v in vars(value).items() if not k.startswith("_")}
    except TypeError:  # no __dict__ (slots, C types)
        return name
    plain = (str, bool, int, float, type(None))
    if len(attributes) > _MAX_ATTRIBUTES or not all(
        isinstance(v, plain) for v in attributes.values()
    ):
        return name
    if not attributes:
        return name
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in attributes.items())})"


def _describe_item(value: object) -> str:
    """An argument inside a described call: strings quoted, everything else described."""
    return repr(value) if isinstance(value, str) else _describe(value)


def _qualified_name(value: object) -> str:
    module = getattr(value, "__module__", None)
    name = getattr(value, "__qualname__", None) or getattr(value, "__name__", None)
    if name is None:
        name = type(value).__qualname__
    return f"{module}.{name}" if module and module != "builtins" else str(name)


def _plain(value: object) -> object:
    """Elements of a sequence: numbers and strings as they are, everything else described."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    scalar = _scalar(value)
    return scalar if scalar is not None else _describe(value)


def _scalar(value: object) -> object | None:
    """The Python number inside a 0-d array or tensor, else None."""
    item = getattr(value, "item", None)
    if not callable(item) or getattr(value, "ndim", None) != 0:
        return None
    try:
        scalar = item()
    except Exception:  # a framework scalar that cannot be read is written as text
        return None
    return scalar if isinstance(scalar, (bool, int, float, complex)) else None


class LoggedParams:
    """The params a run has logged: MLflow params are immutable, so a value is kept as
    first logged and a changed one is refused."""

    def __init__(self, known: Mapping[str, str] | None = None) -> None:
        self._values: dict[str, str] = dict(known or {})

    def add(self, flat: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
        """(the params that are new, a message for each that tried to change)."""
        new: dict[str, str] = {}
        refused: list[str] = []
        for key, value in flat.items():
            old = self._values.get(key)
            if old is None:
                new[key] = value
            elif old != value:
                refused.append(
                    f"aidp-metrics: param {key!r} was already logged as {old[:80]!r}; params "
                    f"cannot change within a run, so {value[:80]!r} is not logged"
                )
        self._values.update(new)
        return new, refused
