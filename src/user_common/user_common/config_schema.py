"""Typed, validated configuration: YAML mappings -> dataclasses, errors that name file and key.

Every node reads its configuration into one dataclass with ``load_dataclass``. A wrong type, an
unknown key, a missing required key or a failed check raises ``ConfigError`` whose message says
which file and which dotted key were wrong, e.g. ``config/robot_sim.yaml: robot.control_hz: must
be > 0, got -1``.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is malformed. ``str(err)`` names the file and the key."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source, self.key, self.problem = source, key, problem
        super().__init__(f"{source}: {key or '<top level>'}: {problem}")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a YAML syntax error becomes a ConfigError."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read file: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(str(path), "", f"invalid YAML: {where}{getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "", f"expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_dataclass(cls: type[T], data: Any, source: str, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, converting and checking every field.

    Fields may declare checks in ``metadata``: ``check=(predicate, "must be ...")``.
    A dataclass may define ``validate(self) -> None`` raising ``ValueError("key: problem")`` for
    checks that involve several fields.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, prefix, f"expected a mapping, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in fields:
            raise ConfigError(source, _join(prefix, str(key)),
                              f"unknown key (known: {', '.join(sorted(fields))})")
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        key = _join(prefix, name)
        if name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ConfigError(source, key, "required key is missing")
            continue
        value = _convert(hints[name], data[name], source, key)
        check = field.metadata.get("check")
        if check is not None and not check[0](value):
            raise ConfigError(source, key, f"{check[1]}, got {value!r}")
        kwargs[name] = value
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except ValueError as exc:
            sub, _, problem = str(exc).partition(": ")
            raise ConfigError(source, _join(prefix, sub), problem or str(exc)) from None
    return obj


def load_config_file(cls: type[T], path: str | Path, overrides: dict[str, Any] | None = None) -> T:
    """Read a YAML file into dataclass ``cls`` (which has a ``source`` field), with dotted overrides."""
    source = str(path)
    data = read_yaml(path)
    if "source" in data:
        raise ConfigError(source, "source", "reserved key")
    if overrides:
        data = apply_overrides(data, overrides)
    obj = load_dataclass(cls, data, source)
    obj.source = source  # type: ignore[attr-defined]
    return obj


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted-key overrides (``{"robot.control_hz": 5}``) applied."""
    out = _deep_copy(data)
    for dotted, value in overrides.items():
        node = out
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError("<override>", dotted, f"{part!r} is not a mapping")
        node[parts[-1]] = value
    return out


def _deep_copy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deep_copy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deep_copy(v) for v in d]
    return d


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _convert(tp: Any, value: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _convert(a, value, source, key)
            except ConfigError as exc:
                errors.append(exc.problem)
        raise ConfigError(source, key, " or ".join(errors))
    if dataclasses.is_dataclass(tp):
        return load_dataclass(tp, value, source, key)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(source, key, f"must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(source, key, f"expected a list, got {_describe(value)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(source, key, f"expected {len(args)} values, got {len(value)}")
            return tuple(_convert(a, v, source, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        seq = [_convert(item, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(seq) if origin is tuple else seq
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(source, key, f"expected a mapping, got {_describe(value)}")
        if len(args) == 2:   # dict[str, X]: every value converted (and checked) as X
            for k in value:
                if not isinstance(k, str):
                    raise ConfigError(source, key, f"keys must be strings, got {_describe(k)}")
            return {k: _convert(args[1], v, source, f"{key}.{k}") for k, v in value.items()}
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(source, key, f"expected true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(source, key, f"expected an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(source, key, f"expected a number, got {_describe(value)}")
        if not math.isfinite(value):
            raise ConfigError(source, key, f"must be finite, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(source, key, f"expected a string, got {_describe(value)}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {key}")  # a bug in a config class


def positive(msg: str = "must be > 0") -> dict[str, Any]:
    """Field metadata: value > 0."""
    return {"check": (lambda v: v > 0, msg)}


def non_negative(msg: str = "must be >= 0") -> dict[str, Any]:
    """Field metadata: value >= 0."""
    return {"check": (lambda v: v >= 0, msg)}
