"""Sampling settings: one typed, frozen object with its defaults and its one validation.

:func:`var.sample.sample`, :func:`~var.sample.sample_progressive`, :func:`~var.sample.generate`,
:func:`var.edit.edit`, `var sample`, `var edit`, the web UI and an exported model's defaults
(config.yaml's ``sampling:``) all take a :class:`SamplingSettings` (as Hugging Face's ``generate`` takes
a ``GenerationConfig``); building one checks and normalises every field, so the command line, the web
page, the web API and a config file accept the same ranges and refuse with the same words
(``top-k must be >= 0 ...``).

The defaults are written once, in the class. Two sets are in use, and :data:`MODEL_DEFAULTS` is the
only place where they differ:

- ``SamplingSettings()``: what a library call such as ``sample(model, vae, labels)`` uses: the paper's
  FID setting in exact fp32, the published sampler's arithmetic (parity, reproducible on any device).
- :data:`MODEL_DEFAULTS`: the same with precision "auto" (bf16 where the device computes it natively,
  exact fp32 elsewhere): what a published model carries and what training exports with a model unless
  its config says otherwise, hence what `var sample`, `var edit` and the web UI use by default.

The sampling functions follow one rule (:func:`merge_settings`): ``settings`` (default
``SamplingSettings()``) with keyword changes of its fields applied by :meth:`SamplingSettings.replace`.
A request (`var sample`'s and `var edit`'s flags, the web page's widgets) is parsed once where it enters,
by :func:`parse_changes` (a named speed and field changes, checked field by field), and its settings are
built once from the model's with those changes; the sampling functions then pass that object on as it is.

Values may arrive as text (a command-line flag, a web form) or as floats that hold integers (a JSON
``2.0``): they are converted, but never rounded: ``2.5`` images or a top-k of ``2.5`` are refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from scaffold.errors import UserError
from scaffold.precision import SAMPLING_PRECISIONS

__all__ = [
    "MAX_CFG",
    "MAX_SEED",
    "MODEL_DEFAULTS",
    "PRECISIONS",
    "SPEEDS",
    "SamplingSettings",
    "SettingsError",
    "add_sampling_arguments",
    "count",
    "given_settings",
    "integer",
    "merge_settings",
    "number",
    "parse_changes",
]

# "auto" lets the sampler pick per device; the others force an autocast dtype (scaffold/precision.py).
PRECISIONS = SAMPLING_PRECISIONS
MAX_SEED = 2**32 - 1  # what a web form's number field and every device's generator take
MAX_CFG = 100.0  # guidance beyond this only saturates; 1e39 is finite in float64 but inf in the logits' dtype


class SettingsError(UserError, ValueError):
    """A sampling setting out of range or of the wrong type; the message names the setting and the value.

    ``field``: the :class:`SamplingSettings` field at fault (``"top_k"``), when the error is about one.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def integer(value: Any, what: str, field: str | None = None) -> int:
    """`value` as an int: an int, a float holding an integer (2.0) or such text ("2", " 2.0 "); else an error
    naming `what` (and carrying `field`, see :class:`SettingsError`)."""
    if isinstance(value, bool) or value is None:
        raise SettingsError(f"{what} must be an integer, got {value!r}", field)
    if isinstance(value, int):
        return value
    try:
        as_float = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise SettingsError(f"{what} must be an integer, got {value!r}", field) from None
    if not as_float.is_integer():  # also NaN and inf
        raise SettingsError(f"{what} must be an integer, got {value!r}", field)
    if isinstance(value, str):  # "12345678901234567890" would lose digits through a float
        try:
            return int(value.strip())
        except ValueError:
            pass
    return int(as_float)


def number(value: Any, what: str, field: str | None = None) -> float:
    """`value` as a finite float (text accepted); NaN and infinities are refused."""
    if isinstance(value, bool) or value is None:
        raise SettingsError(f"{what} must be a number, got {value!r}", field)
    try:
        x = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise SettingsError(f"{what} must be a number, got {value!r}", field) from None
    if not math.isfinite(x):
        raise SettingsError(f"{what} must be finite, got {value!r}", field)
    return x


def count(value: Any, what: str, low: int = 1, high: int | None = None) -> int:
    """An integer count in ``[low, high]`` (number of images, images per class, batch size)."""
    n = integer(value, what)
    if high is not None and not low <= n <= high:
        raise SettingsError(f"{what} must be between {low} and {high}, got {n}")
    if n < low:
        raise SettingsError(f"{what} must be at least {low}, got {n}")
    return n


def _flag(value: Any, what: str, field: str | None = None) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise SettingsError(f"{what} must be true or false, got {value!r}", field)


def _cfg(value: Any) -> float:
    g = number(value, "guidance (cfg)", "cfg")
    if g < 0:
        raise SettingsError(f"guidance (cfg) must be >= 0, got {g}", "cfg")
    if g > MAX_CFG:
        raise SettingsError(f"guidance (cfg) must be at most {MAX_CFG:g}, got {g:g}", "cfg")
    return g


def _top_k(value: Any) -> int:
    k = integer(value, "top-k", "top_k")
    if k < 0:
        raise SettingsError(f"top-k must be >= 0 (0 keeps every token), got {k}", "top_k")
    return k


def _top_p(value: Any) -> float:
    p = number(value, "top-p", "top_p")
    if not 0 <= p <= 1:  # 0 or 1 keep every token (0 is the published sampler's "off")
        raise SettingsError(f"top-p must be in [0, 1] (0 or 1 keep every token), got {p}", "top_p")
    return p


def _seed(value: Any) -> int:
    s = integer(value, "seed", "seed")
    if not 0 <= s <= MAX_SEED:
        raise SettingsError(f"seed must be between 0 and {MAX_SEED}, got {s}", "seed")
    return s


def _precision(value: Any) -> str:
    if value not in PRECISIONS:
        raise SettingsError(f"precision must be one of {', '.join(PRECISIONS)}, got {value!r}", "precision")
    return value


def _fraction(name: str, what: str, low_open: bool) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        x = number(value, what, name)
        if not (0 < x <= 1 if low_open else 0 <= x <= 1):
            raise SettingsError(f"{what} must be in {'(0' if low_open else '[0'}, 1], got {x:g}", name)
        return x

    return check


# Each field's check (SamplingSettings.validate runs them in this order). A check sees its own field alone, so
# that a request's changes can be checked before the settings they change are at hand (parse_changes).
_CHECKS: dict[str, Callable[[Any], Any]] = {
    "cfg": _cfg,
    "top_k": _top_k,
    "top_p": _top_p,
    "seed": _seed,
    "precision": _precision,
    "guidance_until": _fraction("guidance_until", "guidance_until (the last guided scale's position)", False),
    "prune_from": _fraction("prune_from", "prune_from (the first pruned scale's position)", False),
    "prune_keep": _fraction("prune_keep", "prune_keep (the fraction of tokens kept)", True),
    "stop_after": _fraction("stop_after", "stop_after (the last scale's position)", False),
    "more_smooth": lambda value: _flag(value, "more_smooth", "more_smooth"),
}


@dataclass(frozen=True, kw_only=True)
class SamplingSettings:
    """What a sampled image depends on besides its class and its seeding: the one home of these defaults.

    The defaults are the paper's FID setting (cfg 1.5, top-k 900, top-p 0.96; VAR README) in exact fp32.
    ``cfg``: classifier-free guidance, 0 to :data:`MAX_CFG` (0 turns it off); ``top_k``: >= 0 (0 keeps every token);
    ``top_p``: in [0, 1] (0 or 1 keep every token); ``more_smooth``: Gumbel-softmax embeddings, for
    visuals only. ``seed``: the global seed, 0 to :data:`MAX_SEED`: the sampling functions seed one
    generator for the batch with it unless given per-call seeds, `var sample` derives each image's seed
    from it (var.batch_sample.image_seed), the web UI gives image i ``seed + i``. ``precision``: one of
    :data:`PRECISIONS` (scaffold.precision.autocast); "fp32" reproduces the published sampler exactly,
    "auto" is bf16 where the device computes it natively and fp32 elsewhere (:data:`MODEL_DEFAULTS`).

    Fast modes, each off by default (positions: the comment above the fields; :data:`SPEEDS` names sets):
    ``guidance_until``: in [0, 1]; scales past this position sample from the conditional half alone (the
    batch halves there; 1 guides every scale). ``prune_keep``: in (0, 1]; at the scales from position
    ``prune_from`` (in [0, 1]) on, the transformer runs on this fraction of the tokens only, those that
    differ most from their scale's mean input, and the others take the previous scale's last hidden state,
    area-upsampled (FastVAR's cached token pruning; 1 keeps every token). ``stop_after``: in [0, 1]; the
    scales past this position are not run at all, the image is what the earlier scales built (1 runs all).
    """

    cfg: float = 1.5
    top_k: int = 900
    top_p: float = 0.96
    more_smooth: bool = False
    seed: int = 0
    precision: str = "fp32"
    # Fast modes (docs/architecture.md section 8.1). Each is a fraction of the scale schedule: scale si of S
    # sits at position si / (S - 1), from 0 (the first scale) to 1 (the last), so that one value means the
    # same at 64, 256 and 1024 px. The defaults turn every mode off: the exact sampler.
    guidance_until: float = 1.0
    prune_from: float = 0.75
    prune_keep: float = 1.0
    stop_after: float = 1.0

    def __post_init__(self) -> None:
        self.validate()

    EXACT_MODES: ClassVar[dict[str, float]] = {
        "guidance_until": 1.0,
        "prune_from": 0.75,
        "prune_keep": 1.0,
        "stop_after": 1.0,
    }
    """The fast-mode fields at their defaults, every mode off (the "exact" speed, :data:`SPEEDS`)."""

    def validate(self) -> None:
        """Check every field and store it in its canonical type (a frozen object is set once, here)."""
        for name, check in _CHECKS.items():
            object.__setattr__(self, name, check(getattr(self, name)))

    # ---- the fast modes, scale by scale (the sampler asks these; S is the number of scales)

    @staticmethod
    def position(si: int, num_scales: int) -> float:
        """Where scale ``si`` sits in a schedule of ``num_scales``: 0 (the first) to 1 (the last)."""
        return si / max(num_scales - 1, 1)

    def guided_at(self, si: int, num_scales: int) -> bool:
        """Whether scale ``si`` runs the unconditional half for guidance."""
        return self.cfg != 0 and self.position(si, num_scales) <= self.guidance_until + _EPS

    def pruned_at(self, si: int, num_scales: int) -> bool:
        """Whether the transformer runs on a kept fraction of scale ``si``'s tokens (never the first scale)."""
        return self.prune_keep < 1 and si > 0 and self.position(si, num_scales) >= self.prune_from - _EPS

    def runs(self, si: int, num_scales: int) -> bool:
        """Whether scale ``si`` is sampled at all (the first always is)."""
        return si == 0 or self.position(si, num_scales) <= self.stop_after + _EPS

    @property
    def exact(self) -> bool:
        """Whether no fast mode is on: the sampler is then exactly the published one (with fp32)."""
        return self.guidance_until >= 1 and self.prune_keep >= 1 and self.stop_after >= 1

    def speed(self) -> str | None:
        """The name of the :data:`SPEEDS` set these settings' fast modes match, or None."""
        for name, values in SPEEDS.items():
            if all(getattr(self, k) == v for k, v in values.items()):
                return name
        return None

    @classmethod
    def preset(cls, speed: str, base: SamplingSettings | None = None) -> SamplingSettings:
        """``base`` (default ``SamplingSettings()``) with the fast modes of the named speed, one of
        :data:`SPEEDS`: ``SamplingSettings.preset("fast")``. The other settings (cfg, seed, ...) stay."""
        return (base if base is not None else cls()).replace(**_speed_modes(speed))

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **changes: Any) -> SamplingSettings:
        """A checked copy with `changes` applied; a change of ``None`` keeps the current value (an unset
        flag, an empty form field). A name that is not a field is a :class:`SettingsError`."""
        _check_names(changes, "setting")
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def as_dict(self) -> dict[str, Any]:
        """Every field by name, plain Python values (JSON and YAML): what a model folder and a sampling
        folder record, and what :meth:`from_dict` reads back."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Any, defaults: SamplingSettings | None = None) -> SamplingSettings:
        """Settings from a mapping of field names to values (as :meth:`as_dict` writes; a file's
        ``sampling:``): a field it lacks keeps ``defaults`` (default ``SamplingSettings()``); an unknown
        name, a ``None`` or a bad value is a :class:`SettingsError` naming the field."""
        if not isinstance(values, Mapping):
            raise SettingsError(f"sampling settings must be a mapping of setting names to values, got {values!r}")
        _check_names(values, "sampling setting")
        for name, value in values.items():
            if value is None:
                raise SettingsError(f"sampling setting {name!r} has no value (null)", str(name))
        return dataclasses.replace(defaults if defaults is not None else cls(), **values)


def _speed_modes(speed: Any) -> dict[str, float]:
    if speed not in SPEEDS:
        raise SettingsError(f"speed must be one of {', '.join(SPEEDS)}, got {speed!r}", "speed")
    return SPEEDS[speed]


def _check_names(names: Mapping[str, Any], what: str) -> None:
    known = SamplingSettings.field_names()
    for name in names:
        if name not in known:
            raise SettingsError(f"unknown {what} {name!r}; the settings are {', '.join(known)}", str(name))


_EPS = 1e-9  # a position is a ratio of small integers; a fraction typed as 0.8 must admit 4 / 5

SPEEDS: dict[str, dict[str, float]] = {
    # every fast mode off: the published sampler (bit for bit with fp32)
    "exact": SamplingSettings.EXACT_MODES,
    # From the Pareto fronts measured on the emoji (benchmarks/results/fast_sampling_quality_emoji-*.md, 4 x 421
    # samples): the unconditional half off past position 0.6 (judged accuracy +0.2 points, Frechet +6.0%) ...
    "fast": {"guidance_until": 0.6, "prune_from": 0.75, "prune_keep": 1.0, "stop_after": 1.0},
    # ... and 70% of the tokens from 0.8 on (-2.8 points, +14.4%): on the front of the transformer's work (on
    # the wall clock of the small emoji model "guidance to 0.4" ties with it); every cheaper point loses more
    "faster": {"guidance_until": 0.6, "prune_from": 0.8, "prune_keep": 0.7, "stop_after": 1.0},
}
"""The named speeds of :meth:`SamplingSettings.preset`, `var sample --speed` and the web UI: values of
the fast-mode fields (a name fixes all four). "exact" is the default."""

MODEL_DEFAULTS = SamplingSettings(precision="auto")
"""The sampling defaults a model carries: ``SamplingSettings()`` with precision "auto". A published
model has them, training exports them with a model unless its config's ``sampling:`` says otherwise,
and `var sample`, `var edit` and the web UI start from the model's (see the module docstring)."""


def merge_settings(settings: SamplingSettings | None, changes: Mapping[str, Any]) -> SamplingSettings:
    """The one rule of every sampling function: ``settings`` (``None``: ``SamplingSettings()``) with the
    keyword ``changes`` of its fields applied by :meth:`SamplingSettings.replace` (``None`` keeps a value).
    ``sample(model, vae, labels, cfg=2.0)`` is therefore ``sample(model, vae, labels, SamplingSettings(cfg=2.0))``."""
    if settings is None:
        settings = SamplingSettings()
    elif not isinstance(settings, SamplingSettings):
        raise TypeError(
            f"settings must be a SamplingSettings, got {type(settings).__name__}: give settings by name, "
            "e.g. sample(model, vae, labels, cfg=1.5, top_k=900)"
        )
    return settings.replace(**changes) if changes else settings


def parse_changes(changes: Mapping[str, Any], speed: str | None = None) -> dict[str, Any]:
    """A request's changes of the settings, parsed once where the request enters (`var sample`'s and
    `var edit`'s flags, the web page's widgets): the fast modes of the named ``speed`` (one of :data:`SPEEDS`;
    ``None`` or "" names none), then each of ``changes`` that is given (``None``: not given) over them, each
    value in its canonical type. The checks and words are :class:`SamplingSettings`' own, field by field,
    so a bad value is refused here, before the settings it would change are at hand (a command checks its
    flags before loading a model), and ``base.replace(**parse_changes(...))`` then builds the request's
    settings, once, for any ``base``."""
    _check_names(changes, "setting")
    if speed is not None:
        speed = str(speed).strip()
    given = {**(_speed_modes(speed) if speed else {}), **{k: v for k, v in changes.items() if v is not None}}
    return {name: _CHECKS[name](value) for name, value in given.items()}


# ----------------------------------------------------------------------------- command-line flags


def add_sampling_arguments(parser: argparse.ArgumentParser, seed_help: str) -> None:
    """The sampling flags of `var sample` and `var edit`. Numbers are read as text and checked by
    :class:`SamplingSettings` (the web UI's checks, ranges and messages); an unset flag is None, the model's."""
    parser.add_argument("--seed", default=None, help=seed_help)
    parser.add_argument("--cfg", default=None, help=f"guidance, 0 to {MAX_CFG:g} (default: the model's)")
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
    parser.add_argument(
        "--speed",
        default=None,
        choices=tuple(SPEEDS),
        help="a named set of fast modes (default: the model's; exact = the published sampler); "
        "the four flags below change one mode over it",
    )
    parser.add_argument("--guidance-until", default=None, help="guide the scales up to this position, 0 to 1")
    parser.add_argument("--prune-from", default=None, help="prune tokens from this scale position on, 0 to 1")
    parser.add_argument("--prune-keep", default=None, help="fraction of tokens the pruned scales run on, (0, 1]")
    parser.add_argument("--stop-after", default=None, help="run the scales up to this position only, 0 to 1")


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given by :func:`add_sampling_arguments`' flags, parsed (:func:`parse_changes`): ``--speed``'s
    fast modes, then each flag given over them; for :meth:`SamplingSettings.replace` of the model's settings."""
    return parse_changes({name: getattr(args, name) for name in SamplingSettings.field_names()}, args.speed)
