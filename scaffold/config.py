"""Typed configs: a dataclass holds the defaults, OmegaConf YAML and `key=value` overrides refine it.

`OmegaConf.structured(schema)` makes a misspelt key or a value of the wrong type an error instead of a
silent default (STYLE.md point 2). Every `var` subcommand loads its config through `load_config`.
Both stages load their configs through it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from .errors import UserError

__all__ = ["ConfigError", "add_config_arguments", "config_to_dict", "load_config"]

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A config file or override that does not fit the schema; the message names the key."""


def _describe(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None) or getattr(err, "key", None)
    msg = getattr(err, "msg", None) or str(err).splitlines()[0]
    return f"key '{key}': {msg}" if key else msg


def load_config(schema: type[T], path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> T:
    """Merge `path` (YAML) and `overrides` (`a.b=value` strings) over the dataclass `schema`.

    Returns an instance of `schema` (nested dataclasses included). Raises ConfigError naming the file
    or the key for a missing file, an unknown key, a value of the wrong type or a malformed override.
    """
    cfg = OmegaConf.structured(schema)
    if path is not None:
        if not os.path.isfile(path):
            raise ConfigError(f"config file not found: {path}")
        try:
            file_cfg = OmegaConf.load(path)
        except Exception as err:  # yaml.YAMLError and friends: report the file, not a parser trace
            raise ConfigError(f"cannot parse config file {path}: {err}") from err
        try:
            cfg = OmegaConf.merge(cfg, file_cfg)
        except (ConfigKeyError, ConfigAttributeError, ValidationError) as err:
            raise ConfigError(f"{path}: {_describe(err)} (unknown key or wrong type)") from err
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key = item.split("=", 1)[0]
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
        except (ConfigKeyError, ConfigAttributeError) as err:
            raise ConfigError(f"override {item!r}: unknown key '{key}'") from err
        except ValidationError as err:
            raise ConfigError(f"override {item!r}: wrong type for key '{key}': {_describe(err)}") from err
        except OmegaConfBaseException as err:
            raise ConfigError(f"override {item!r}: {_describe(err)}") from err
    try:
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(_describe(err)) from err
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
