"""Sampling settings: one typed, frozen object with its defaults and its one validation.

`var sample`, the web UI and an exported model's defaults (config.yaml's ``sampling:``) all hold a
:class:`SamplingSettings`; building one checks and normalises every field, so the command line, the
web page, the web API and a config file accept the same ranges and refuse with the same words
(``top-k must be >= 0 ...``). Call sites turn it into the keyword arguments of
:func:`var.sample.sample` / :func:`var.edit.edit` with :meth:`SamplingSettings.sample_kwargs`.

Values may arrive as text (a command-line flag, a web form) or as floats that hold integers (a JSON
``2.0``): they are converted, but never rounded: ``2.5`` images or a top-k of ``2.5`` are refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from scaffold.errors import UserError

__all__ = [
    "MAX_SEED",
    "PRECISIONS",
    "SamplingSettings",
    "SettingsError",
    "add_sampling_arguments",
    "count",
    "given_settings",
    "integer",
    "number",
]

# "auto" lets the sampler pick per device (see var.sample); the others force an autocast dtype.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MAX_SEED = 2**32 - 1  # what a web form's number field and every device's generator take


class SettingsError(UserError, ValueError):
    """A sampling setting out of range or of the wrong type; the message names the setting and the value."""


def integer(value: Any, what: str) -> int:
    """`value` as an int: an int, a float holding an integer (2.0) or such text ("2", " 2.0 "); else an error."""
    if isinstance(value, bool) or value is None:
        raise SettingsError(f"{what} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    try:
        as_float = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise SettingsError(f"{what} must be an integer, got {value!r}") from None
    if not as_float.is_integer():  # also NaN and inf
        raise SettingsError(f"{what} must be an integer, got {value!r}")
    if isinstance(value, str):  # "12345678901234567890" would lose digits through a float
        try:
            return int(value.strip())
        except ValueError:
            pass
    return int(as_float)


def number(value: Any, what: str) -> float:
    """`value` as a finite float (text accepted); NaN and infinities are refused."""
    if isinstance(value, bool) or value is None:
        raise SettingsError(f"{what} must be a number, got {value!r}")
    try:
        x = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise SettingsError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise SettingsError(f"{what} must be finite, got {value!r}")
    return x


def count(value: Any, what: str, low: int = 1, high: int | None = None) -> int:
    """An integer count in ``[low, high]`` (number of images, images per class, batch size)."""
    n = integer(value, what)
    if high is not None and not low <= n <= high:
        raise SettingsError(f"{what} must be between {low} and {high}, got {n}")
    if n < low:
        raise SettingsError(f"{what} must be at least {low}, got {n}")
    return n


def _flag(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise SettingsError(f"{what} must be true or false, got {value!r}")


@dataclass(frozen=True)
class SamplingSettings:
    """What a sampled image depends on besides its class: the one home of these defaults.

    The defaults are the paper's FID setting (cfg 1.5, top-k 900, top-p 0.96; VAR README). ``seed`` is
    the global seed: `var sample` derives each image's seed from it (var.batch_sample.image_seed), the web UI
    gives image i ``seed + i``. ``precision``: one of :data:`PRECISIONS`; "auto" (the default) is bf16
    where the device computes it natively and exact fp32 elsewhere (var.sample.resolve_precision), so it
    never slows a machine down; `var.sample.sample()` itself defaults to "fp32".
    """

    cfg: float = 1.5
    top_k: int = 900
    top_p: float = 0.96
    more_smooth: bool = False
    seed: int = 0
    precision: str = "auto"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field and store it in its canonical type (a frozen object is set once, here)."""
        g = number(self.cfg, "guidance (cfg)")
        if g < 0:
            raise SettingsError(f"guidance (cfg) must be >= 0, got {g}")
        k = integer(self.top_k, "top-k")
        if k < 0:
            raise SettingsError(f"top-k must be >= 0 (0 keeps every token), got {k}")
        p = number(self.top_p, "top-p")
        if not 0 <= p <= 1:  # 0 or 1 keep every token (0 is the published sampler's "off")
            raise SettingsError(f"top-p must be in [0, 1] (0 or 1 keep every token), got {p}")
        s = integer(self.seed, "seed")
        if not 0 <= s <= MAX_SEED:
            raise SettingsError(f"seed must be between 0 and {MAX_SEED}, got {s}")
        if self.precision not in PRECISIONS:
            raise SettingsError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name, value in (("cfg", g), ("top_k", k), ("top_p", p), ("seed", s)):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "more_smooth", _flag(self.more_smooth, "more_smooth"))

    def replace(self, **changes: Any) -> SamplingSettings:
        """A copy with `changes` applied; a change of ``None`` keeps the current value (an unset flag)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def sample_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of var.sample.sample/generate and var.edit.edit (all but the seed)."""
        return dict(
            cfg=self.cfg, top_k=self.top_k, top_p=self.top_p, more_smooth=self.more_smooth, precision=self.precision
        )

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- command-line flags


def add_sampling_arguments(parser: argparse.ArgumentParser, seed_help: str) -> None:
    """The sampling flags of `var sample` and `var edit`. Numbers are read as text and checked by
    :class:`SamplingSettings` (the web UI's checks, ranges and messages); an unset flag is None, the model's."""
    parser.add_argument("--seed", default=None, help=seed_help)
    parser.add_argument("--cfg", default=None, help="guidance, >= 0 (default: the model's)")
    parser.add_argument("--top-k", default=None, help="top-k, 0 disables (default: the model's)")
    parser.add_argument("--top-p", default=None, help="top-p in [0, 1], 0 or 1 disable (default: the model's)")
    parser.add_argument(
        "--more-smooth",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Gumbel-softmax smoothing, for visuals only (default: the model's)",
    )
    parser.add_argument(
        "--precision",
        default=None,
        help=f"{', '.join(PRECISIONS)} (default: the model's; auto = bf16 where native, exact fp32 elsewhere)",
    )


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given by :func:`add_sampling_arguments`' flags, for :meth:`SamplingSettings.replace`."""
    return {name: getattr(args, name) for name in ("cfg", "top_k", "top_p", "more_smooth", "seed", "precision")}
