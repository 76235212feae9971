"""The one way every config is read: OmegaConf structured configs over a dataclass's defaults.

:func:`load` merges plain data over a dataclass's defaults (typed merge, ``1e-4`` read as
a number, unknown keys rejected with the closest key), applies ``--set a.b=c`` overrides
(``regularizers.0.args.lam=30`` reaches into a list), and instantiates the dataclasses,
whose ``__post_init__`` checks ranges. Every problem is one :class:`~ssu.errors.SSUError`
line naming the key. :func:`build` turns a component's ``args`` block into its ``Args``.

Shorthand: a component block may be given by name alone -- ``method: ssu``,
``regularizers: [fisher, kl]`` -- and means ``{name: ..., args: {}}`` (:class:`ComponentSpec`).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ssu.errors import SSUError

C = TypeVar("C")


def check(ok: bool, message: str) -> None:
    if not ok:
        raise SSUError(message)


@dataclass
class ComponentSpec:
    """A component named in a config and its parameters (checked against its ``Args`` by the recipes)."""

    name: str = ""
    args: dict[str, Any] = field(default_factory=dict)



def _error(e: Exception, where: str) -> SSUError:
    """One line from an OmegaConf error, naming the key (and the closest known key)."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    key = getattr(e, "full_key", None)
    msg = str(e).splitlines()[0].strip() if str(e).strip() else type(e).__name__
    msg = msg.removeprefix("Merge error: ")
    prefix = f"{where}: " if where else ""
    if isinstance(e, (ConfigKeyError, ConfigAttributeError)) and key and msg.startswith("Key "):
        hint = msg.partition("Did you mean: ")[2].rstrip("?")
        return SSUError(f"{prefix}unknown config key {key!r}" + (f". Did you mean {hint}?" if hint else ""))
    return SSUError(f"{prefix}config key {key!r}: {msg}" if key else f"{prefix}{msg}")


def _check_set_key(cls, cfg, key: str) -> None:
    """A ``--set`` key the schema does not know (with the closest field), or one that indexes
    past the end of a list, said plainly."""
    import difflib

    from omegaconf import ListConfig, OmegaConf

    parts = key.split(".")
    tp: Any = cls
    for i, part in enumerate(parts):
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            names = [f.name for f in dataclasses.fields(tp)]
            if part not in names:
                close = difflib.get_close_matches(part, names, n=1)
                hint = f". Did you mean {'.'.join(parts[:i] + close)!r}?" if close else ""
                raise SSUError(f"unknown config key {key!r}{hint}")
        tp = _type_at(cls, parts[: i + 1])
    for i, part in enumerate(parts[1:], start=1):
        node = OmegaConf.select(cfg, ".".join(parts[:i]))
        if isinstance(node, ListConfig) and part.isdigit() and int(part) >= len(node):
            raise SSUError(f"--set {key}: {'.'.join(parts[:i])} has {len(node)} entr{'y' if len(node) == 1 else 'ies'}")


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_spec_list(tp) -> bool:
    return typing.get_origin(tp) is list and typing.get_args(tp) == (ComponentSpec,)


def _shorthand(tp, value: Any) -> Any:
    """``"ssu"`` -> ``{"name": "ssu"}`` where ``tp`` is a component block (or a list of them)."""
    if tp is ComponentSpec and isinstance(value, str):
        return {"name": value}
    if _is_spec_list(tp) and isinstance(value, list):
        return [{"name": v} if isinstance(v, str) else v for v in value]
    return value


def normalize(cls, data: Any) -> Any:
    """``data`` for dataclass ``cls`` with every component shorthand spelled out (recursively)."""
    if not (isinstance(data, dict) and dataclasses.is_dataclass(cls)):
        return data
    hints = _hints(cls)
    out = {}
    for key, value in data.items():
        tp = hints.get(key)
        value = _shorthand(tp, value)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            value = normalize(tp, value)
        out[key] = value
    return out


def _type_at(cls, path: list[str]):
    """The declared type at a dotted key path of dataclass ``cls`` (None where unknown)."""
    tp: Any = cls
    for part in path:
        if _is_spec_list(tp) and part.isdigit():
            tp = ComponentSpec
        elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
            tp = _hints(tp).get(part)
        else:
            return None
    return tp


def parse_set(items: list[str] | tuple[str, ...]) -> list[tuple[str, Any]]:
    """``["train.lr=1e-4", "regularizers=[fisher]"]`` -> ``[(key, value), ...]``, values read as YAML."""
    from omegaconf import OmegaConf

    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SSUError(f"--set expects key=value, got {item!r}")
        try:
            value = OmegaConf.to_container(OmegaConf.from_dotlist([f"v={raw}"]))["v"]
        except Exception as e:  # noqa: BLE001 - OmegaConf's grammar errors have no common base
            raise SSUError(f"--set {item!r}: cannot read the value ({str(e).splitlines()[0]})") from None
        out.append((key.strip(), value))
    return out


def load(cls: type[C], *layers: dict[str, Any] | None, sets: list[tuple[str, Any]] | tuple = (),
         where: str = "") -> C:
    """An instance of dataclass ``cls``: its defaults <- each mapping in ``layers`` <- ``sets``.

    ``sets`` are ``(dotted key, value)`` pairs (:func:`parse_set`); a key may index into
    a list (``regularizers.0.args.lam``). ``where`` prefixes error messages
    ("method ssu"). Raises :class:`SSUError` in one line on an unknown key, a value of
    the wrong type or a failed range check.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = OmegaConf.structured(cls)
        for layer in layers:
            if layer:
                if not isinstance(layer, dict):
                    raise SSUError(f"{where + ': ' if where else ''}expected a mapping of keys to values, "
                                   f"got {layer!r}")
                cfg = OmegaConf.merge(cfg, normalize(cls, layer))
        for key, value in sets:
            _check_set_key(cls, cfg, key)
            value = _shorthand(_type_at(cls, key.split(".")), value)
            OmegaConf.update(cfg, key, value, merge=True)
        order = {f.name: i for i, f in enumerate(dataclasses.fields(cls))}
        missing = sorted(OmegaConf.missing_keys(cfg), key=lambda k: (order.get(k.split(".")[0], len(order)), k))
        if missing:
            raise SSUError(f"{where + ' ' if where else ''}needs {', '.join(missing)}")
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        raise _error(e, where) from None


def build(cls: type[C] | None, args: dict[str, Any] | None, where: str) -> C | None:
    """A component's typed parameters from a config block's ``args`` (None if it takes none)."""
    if cls is None:
        if args:
            raise SSUError(f"{where} takes no args, got {sorted(args)}")
        return None
    return load(cls, dict(args or {}), where=where)


def as_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj) if obj is not None else {}


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Nested merge of plain mappings (``over`` wins); used to stack recipe bundles and overrides."""
    merged = dict(base)
    for k, v in over.items():
        merged[k] = merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file as a plain mapping (OmegaConf's reader: ``1e-4`` is a number)."""
    from omegaconf import OmegaConf

    try:
        data = OmegaConf.to_container(OmegaConf.load(Path(path))) or {}
    except Exception as e:  # noqa: BLE001 - file and YAML errors alike become one line
        raise SSUError(f"cannot read config {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SSUError(f"config {path} must be a mapping of keys to values")
    return data


def dumps(cfg: Any) -> str:
    return json.dumps(dataclasses.asdict(cfg), indent=2, sort_keys=True)
