"""Typed configs: a dataclass holds the defaults, OmegaConf YAML and `key=value` overrides refine it.

`OmegaConf.structured(schema)` makes a misspelt key or a value of the wrong type an error instead of a
silent default (STYLE.md point 2). Every `var` subcommand loads its config through `load_config`.
Both stages load their configs through it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from .errors import UserError

__all__ = ["ConfigError", "add_config_arguments", "config_to_dict", "load_config"]

T = TypeVar("T")


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


def _load_file(cfg: Any, path: str | os.PathLike) -> Any:
    """`cfg` with the YAML file `path` merged over it; every problem is a ConfigError naming the file."""
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
    try:
        return OmegaConf.merge(cfg, loaded)
    except OmegaConfBaseException as err:
        blamed = _blame(cfg, OmegaConf.to_container(loaded, resolve=False))
        if blamed is None:
            raise ConfigError(f"{path}: {_describe(err)}") from err
        key, value, inner = blamed
        raise ConfigError(f"{path}: key '{key}': {_describe(inner, value)}") from err


def load_config(schema: type[T], path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> T:
    """Merge `path` (YAML) and `overrides` (`a.b=value` strings) over the dataclass `schema`.

    Returns an instance of `schema` (nested dataclasses included). Raises ConfigError naming the file
    or the key for a missing file, an unknown key, a value of the wrong type or a malformed override.
    """
    cfg = OmegaConf.structured(schema)
    if path is not None:
        cfg = _load_file(cfg, path)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        try:
            parsed = OmegaConf.from_dotlist([item])
        except Exception as err:  # yaml.YAMLError, or OmegaConf's grammar errors for a bad key
            raise ConfigError(f"override {item!r}: cannot parse it: {' '.join(str(err).split())}") from err
        try:
            cfg = OmegaConf.merge(cfg, parsed)
        except (ConfigKeyError, ConfigAttributeError) as err:
            raise ConfigError(f"override {item!r}: unknown key '{key}'") from err
        except ValidationError as err:
            raise ConfigError(f"override {item!r}: wrong type for key '{key}': {_describe(err, value)}") from err
        except OmegaConfBaseException as err:
            raise ConfigError(f"override {item!r}: {_describe(err, value)}") from err
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
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def add_config_arguments(parser) -> None:
    """The two arguments every config-driven `var` subcommand takes: `--config FILE` and `key=value`s."""
    parser.add_argument("--config", metavar="FILE", help="YAML file merged over the defaults")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="overrides merged last, e.g. trainer.max_steps=100"
    )
