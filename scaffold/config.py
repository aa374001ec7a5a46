"""Typed configs: a dataclass holds the defaults; YAML files and `key=value` overrides refine it, in order.

`load_config(schema, ["a.yaml", "b.yaml"], ["optim.lr=1e-3"])` merges a.yaml over the dataclass's
defaults, b.yaml over that, then each override: mappings merge key by key, lists and scalars are
replaced. `OmegaConf.structured(schema)` makes a misspelt key or a value of the wrong type an error
naming the file (or the override) and the key, with the nearest valid key.
Every `var` subcommand loads its config through `load_config`.

A config dataclass may declare, as class attributes (not fields):

- `presets()`, a classmethod returning `{name: instance}`: its mapping then takes `preset: NAME`, the
  values its fields start from. A preset lies beneath every file and override, whatever their order
  (the last one named wins): `model: {preset: d16, attention: lka}` is d16 with lka attention, and
  `model.preset=d20` after `--config d16.yaml --config d16_lka.yaml` is d20 with what those files set.
- `extra_field`, the name of one of its dict fields, and `extra_names()`: a key the dataclass does not
  declare but `extra_names()` holds goes into that dict (`trainer:` passes Lightning's arguments so).
- `renamed`, `{old key: new dotted key}` below the same mapping: a file written before a key moved
  still loads, with a warning naming the new key.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import re
from collections.abc import Sequence
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from .errors import UserError

__all__ = ["ConfigError", "add_config_arguments", "config_to_dict", "load_config"]

T = TypeVar("T")
PathLike = str | os.PathLike
log = logging.getLogger(__name__)


class ConfigError(UserError, ValueError):
    """A config file or override that does not fit the schema; the message names the key."""


def _describe(err: Exception, value: Any = None) -> str:
    """The first line of an OmegaConf error, with the `$VALUE`-style placeholders it sometimes leaves filled in.

    OmegaConf formats its messages from templates and, for an element of a list among others, raises
    before filling them (`Value '$VALUE' of type '$VALUE_TYPE' could not be converted to Integer`).
    """
    text = (str(err) or type(err).__name__).splitlines()[0].strip()
    shown = "a value" if value is None else f"value {_short(value)!r}"
    text = _TEMPLATE_VALUE.sub(shown, text)
    return _PLACEHOLDER.sub(shown if value is not None else "it", text)


_TEMPLATE_VALUE = re.compile(r"[Vv]alue '\$VALUE'( of type '\$VALUE_TYPE')?")
_PLACEHOLDER = re.compile(r"'?\$[A-Z_]+'?")


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _blame(cfg: Any, loaded: Any, prefix: tuple[str, ...] = ()) -> tuple[str, Any, Exception] | None:
    """The innermost key of the loaded YAML `loaded` whose merge over `cfg` fails: (dotted key, value, error)."""
    if not isinstance(loaded, dict):
        return None
    for key, value in loaded.items():
        path = (*prefix, str(key))
        nested: Any = value
        for part in reversed(path):
            nested = {part: nested}
        try:
            OmegaConf.merge(cfg, OmegaConf.create(nested))
        except OmegaConfBaseException as err:
            return _blame(cfg, value, path) or (".".join(path), value, err)
    return None


def _read_file(path: PathLike) -> dict:
    """The mapping the YAML file `path` holds, as plain containers; every problem is a ConfigError naming the file."""
    if os.path.isdir(path):
        raise ConfigError(f"config file {path} is a folder: pass a YAML file (e.g. configs/tokenizer/digits.yaml)")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    not_a_mapping = "at its top level; it must be a mapping of keys to values (e.g. 'max_steps: 100')"
    try:
        loaded = OmegaConf.load(path)  # OmegaConf's YAML loader: 1e-4 is a float, as in its overrides
    except Exception as err:  # yaml.YAMLError, a decoding error, a scalar at the top level: the file, not a trace
        if str(err).startswith("Invalid loaded object type"):  # OmegaConf's words for a lone scalar
            raise ConfigError(f"config file {path} holds a single value {not_a_mapping}") from err
        raise ConfigError(f"cannot parse config file {path}: {' '.join(str(err).split())}") from err
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"config file {path} holds a list {not_a_mapping}")
    return OmegaConf.to_container(loaded, resolve=False)  # type: ignore[return-value]


def _read_override(item: str) -> dict:
    """`a.b=value` as the nested mapping {a: {b: value}}."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    try:
        parsed = OmegaConf.from_dotlist([item])
    except Exception as err:  # yaml.YAMLError, or OmegaConf's grammar errors for a bad key
        raise ConfigError(f"override {item!r}: cannot parse it: {' '.join(str(err).split())}") from err
    return OmegaConf.to_container(parsed, resolve=False)  # type: ignore[return-value]


def _suggest(key: Any, known: Sequence[str], prefix: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.6)
    return f"; did you mean '{'.'.join((*prefix, close[0]))}'?" if close else ""


def _set_dotted(data: dict, dotted: str, value: Any) -> bool:
    """data[a][b] = value for `dotted` "a.b", creating mappings on the way; False when it is already set."""
    *parents, last = dotted.split(".")
    for part in parents:
        data = data.setdefault(part, {})
        if not isinstance(data, dict):
            return False
    if last in data:
        return False
    data[last] = value
    return True


def _prepare(node: Any, data: Any, label: str, prefix: tuple[str, ...], presets: dict[str, tuple[type, str]]) -> None:
    """Rewrite `data`, what the source `label` gives for the config node `node`, in place for merging:
    renamed keys moved to their new place, a `preset` taken out and recorded in `presets`, keys for the
    extras field moved into it, and an unknown key refused naming the nearest known one."""
    cls = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
    if not isinstance(data, dict) or cls is None or not dataclasses.is_dataclass(cls):
        return  # a scalar, a list, a plain dict field (any keys) or a type error the merge will name
    where = ".".join(prefix)
    for old, new in getattr(cls, "renamed", {}).items():
        if old in data:
            full_old, full_new = ".".join((*prefix, old)), ".".join((*prefix, new))
            if not _set_dotted(data, new, data.pop(old)):
                raise ConfigError(f"{label}: '{full_old}' is the old name of '{full_new}', which is set too: drop it")
            log.warning("%s: '%s' is now '%s'; read as such (rename it to silence this)", label, full_old, full_new)
    has_presets = callable(getattr(cls, "presets", None)) and "preset" not in node
    if has_presets and "preset" in data:
        name, choices = data.pop("preset"), cls.presets()
        if not isinstance(name, str) or name not in choices:
            raise ConfigError(
                f"{label}: key '{'.'.join((*prefix, 'preset'))}': unknown preset {name!r}"
                f"{_suggest(name, list(choices), ())} (the presets: {', '.join(choices)})"
            )
        presets[where] = (cls, name)
    extra = getattr(cls, "extra_field", None)
    for key in list(data):
        if key in node:
            try:
                child = node[key]
            except OmegaConfBaseException:  # a mandatory value not set yet: nothing below it to check
                continue
            _prepare(child, data[key], label, (*prefix, str(key)), presets)
        elif extra is not None and isinstance(data.get(extra, {}), dict) and key in cls.extra_names():
            data.setdefault(extra, {})[key] = data.pop(key)
        else:
            known = [*node.keys(), *(["preset"] if has_presets else []), *(cls.extra_names() if extra else ())]
            raise ConfigError(f"{label}: unknown key '{'.'.join((*prefix, str(key)))}'{_suggest(key, known, prefix)}")


def _nested(dotted: str, value: Any) -> Any:
    for part in reversed(dotted.split(".")) if dotted else ():
        value = {part: value}
    return value


def _merge_file(cfg: Any, data: dict, path: str) -> Any:
    try:
        return OmegaConf.merge(cfg, OmegaConf.create(data))
    except OmegaConfBaseException as err:
        blamed = _blame(cfg, data)
        if blamed is None:
            raise ConfigError(f"{path}: {_describe(err)}") from err
        key, value, inner = blamed
        raise ConfigError(f"{path}: key '{key}': {_describe(inner, value)}") from err


def _merge_override(cfg: Any, data: dict, item: str) -> Any:
    key, value = item.split("=", 1)
    try:
        return OmegaConf.merge(cfg, OmegaConf.create(data))
    except (ConfigKeyError, ConfigAttributeError) as err:
        raise ConfigError(f"override {item!r}: unknown key '{key}'") from err
    except ValidationError as err:
        raise ConfigError(f"override {item!r}: wrong type for key '{key}': {_describe(err, value)}") from err
    except OmegaConfBaseException as err:
        raise ConfigError(f"override {item!r}: {_describe(err, value)}") from err


def _interpolations(data: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, value) of every string in `data` that OmegaConf would read as an interpolation."""
    if isinstance(data, dict):
        return [hit for k, v in data.items() for hit in _interpolations(v, f"{prefix}{k}.")]
    if isinstance(data, list):
        return [hit for i, v in enumerate(data) for hit in _interpolations(v, f"{prefix.rstrip('.')}[{i}].")]
    return [(prefix.rstrip("."), data)] if isinstance(data, str) and "${" in data else []


def load_config(
    schema: type[T],
    paths: PathLike | Sequence[PathLike] | None = None,
    overrides: Sequence[str] = (),
    interpolation: bool = True,
) -> T:
    """Merge the YAML file(s) `paths`, in order, then `overrides` (`a.b=value` strings) over the dataclass `schema`.

    Returns an instance of `schema` (nested dataclasses included). Raises ConfigError naming the file
    or the override, and the key, for a missing file, an unknown key, a value of the wrong type, an
    unknown preset or a malformed override.

    `interpolation=False` reads the files as plain YAML, for files the user did not write (a model
    folder's config.yaml): a `${...}` in one is a ConfigError naming the file and the key, never resolved
    (`${oc.env:SECRET}` would copy the loader's environment into what it shows and exports).
    """
    files = [] if paths is None else [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    file_data = [(str(path), _read_file(path)) for path in files]
    if not interpolation:
        for path, data in file_data:
            for key, value in _interpolations(data)[:1]:
                raise ConfigError(
                    f"{path}: key '{key}': {_short(value)!r} is an interpolation; this file is read as plain YAML"
                )
    override_data = [(item, _read_override(item)) for item in overrides]
    cfg = OmegaConf.structured(schema)
    presets: dict[str, tuple[type, str]] = {}
    for path, data in file_data:
        _prepare(cfg, data, path, (), presets)
    for item, data in override_data:
        _prepare(cfg, data, f"override {item!r}", (), presets)
    for where, (cls, name) in sorted(presets.items(), key=lambda kv: len(kv[0].split(".")) if kv[0] else 0):
        preset = OmegaConf.to_container(OmegaConf.structured(cls.presets()[name]))
        cfg = OmegaConf.merge(cfg, _nested(where, preset))  # beneath every file and override
    for path, data in file_data:
        cfg = _merge_file(cfg, data, path)
    for item, data in override_data:
        cfg = _merge_override(cfg, data, item)
    try:
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        raise ConfigError(f"key '{key}': {_describe(err)}" if key else _describe(err)) from err
    _validate_tree(obj)
    return obj  # type: ignore[return-value]


def _validate_tree(obj: Any, prefix: str = "") -> None:
    """Call `validate()` on the config and on every nested dataclass, innermost first."""
    if not dataclasses.is_dataclass(obj):
        return
    for field in dataclasses.fields(obj):
        _validate_tree(getattr(obj, field.name), f"{prefix}{field.name}.")
    post = getattr(obj, "validate", None)
    if callable(post):
        try:
            post()
        except ValueError as err:
            where = f" (in '{prefix.rstrip('.')}')" if prefix else ""
            raise ConfigError(f"{err}{where}") from err


def config_to_dict(cfg: Any) -> dict:
    """A plain, YAML-serialisable dict of a (nested) dataclass config."""
    # Not resolved: a string of the config that looks like `${...}` (a class folder's name) is data, and is
    # written as it is, never replaced by what it would interpolate (an environment variable).
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=False)  # type: ignore[return-value]


def add_config_arguments(parser) -> None:
    """The arguments every config-driven `var` subcommand takes: `--config FILE` (repeatable) and `key=value`s."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        action="append",
        help="YAML file merged over the defaults; repeat it to merge several in order (a base, then overlays)",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="overrides merged last, e.g. max_steps=100 trainer.devices=2"
    )
