"""The web UI's logic with no Gradio in it: argument checks, label parsing, image and mask preparation,
:func:`generate_images` / :func:`generate_progressive` (sampling) and :func:`edit_image` (editing).

Sampling settings follow :mod:`var.sample`'s rule with the model's defaults as the base: ``settings``
(default ``loaded.sampling``) with keyword changes of its fields, a change left ``None`` keeping the
value; they are checked by :class:`var.settings.SamplingSettings`, the same check (ranges and words) as
`var sample`'s. The settings' ``seed`` gives image i the seed ``seed + i``. Every refusal is a
``UserError`` (:class:`InputError` for the UI's own checks) whose message is shown to the user as it is.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from scaffold.errors import UserError
from tokenizer.data import to_rgb
from var.edit import edit
from var.export import LoadedModel
from var.sample import decode, generate, sample
from var.settings import MAX_SEED, SamplingSettings, SettingsError, count, integer, merge_settings

__all__ = [
    "MAX_IMAGES",
    "MAX_SEED",
    "InputError",
    "center_square",
    "check_declared_image",
    "class_choices",
    "edit_image",
    "generate_images",
    "generate_progressive",
    "mask_from_editor",
    "parse_label",
    "request_settings",
    "shade",
    "square_mask",
    "to_pil",
]

MAX_IMAGES = 16  # per request: one device serves everyone (the queue runs one request at a time)
MAX_UPLOAD_SIDE = 8192  # pixels per side of an uploaded image; larger ones are refused, not resized
MIN_UPLOAD_SIDE = 8
MAX_EDITOR_LAYERS = 4  # painted layers an edit request may declare; only the first is decoded (the page sends one)


class InputError(UserError, ValueError):
    """A request the UI refuses; the message is shown to the user as it is."""


# ----------------------------------------------------------------------------- checks and parsing


def class_choices(class_names: Sequence[str]) -> list[str]:
    """The class picker's entries, ``"index: name"``; searching by either part finds a class."""
    return [f"{i}: {name}" for i, name in enumerate(class_names)]


def parse_label(value: Any, num_classes: int, allow_null: bool = False) -> int:
    """A class index from an int, ``"3"`` or a picker entry ``"3: name"``; checked against ``num_classes``.

    ``allow_null`` also accepts ``num_classes`` itself, the null class (plain in-painting when editing).
    """
    if isinstance(value, str):
        head = value.split(":", 1)[0].strip()
        if not head:
            raise InputError("pick a class")
        value = head
    label = integer(value, "class")
    top = num_classes if allow_null else num_classes - 1
    if not 0 <= label <= top:
        raise InputError(f"class {label} is out of range: this model has classes 0 to {num_classes - 1}")
    return label


def request_settings(
    defaults: SamplingSettings, num_images: Any = 1, speed: str | None = None, **changes: Any
) -> tuple[int, SamplingSettings]:
    """``(num_images, settings)`` of a request, checked: ``defaults`` (the model's), with the fast modes of
    ``speed`` (a name of :data:`~var.settings.SPEEDS`; ``None`` or "" keeps the model's), then the given
    ``changes`` of its fields (text, numbers; ``None`` keeps the default)."""
    n = count(num_images, "number of images", 1, MAX_IMAGES)
    if speed not in (None, ""):
        defaults = SamplingSettings.preset(str(speed).strip(), defaults)
    s = merge_settings(defaults, changes)
    if s.seed + n - 1 > MAX_SEED:  # image i uses seed + i: the last one must still be a seed
        raise SettingsError(
            f"seed must be at most {MAX_SEED - n + 1} for {n} images (image i uses seed + i), got {s.seed}", "seed"
        )
    return n, s


# ----------------------------------------------------------------------------- images


def to_pil(img_B3HW: torch.Tensor) -> list[Image.Image]:
    """Images in [0, 1] as 8-bit RGB PIL images."""
    arr = img_B3HW.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


def check_declared_image(source: str | bytes | Any) -> None:
    """Refuse an uploaded file before any pixel is decoded: PIL reads only the header here, so a small file
    that declares a huge image costs nothing. `source` is a path, the bytes, or a file object."""
    import io

    if isinstance(source, bytes | bytearray | memoryview):
        source = io.BytesIO(source)
    try:
        with Image.open(source) as im:  # lazy: the size is the header's
            _check_upload(im)
    except InputError:
        raise
    except Image.DecompressionBombError:
        raise InputError(
            f"the image declares more pixels than this server decodes (at most {MAX_UPLOAD_SIDE} per side)"
        ) from None
    except (OSError, ValueError, SyntaxError) as err:
        raise InputError(f"the upload is not an image this server reads ({type(err).__name__})") from None


def _check_upload(img: Image.Image) -> None:
    w, h = img.size
    if max(w, h) > MAX_UPLOAD_SIDE:
        raise InputError(f"the image is {w}x{h}: at most {MAX_UPLOAD_SIDE} pixels per side")
    if min(w, h) < MIN_UPLOAD_SIDE:
        raise InputError(f"the image is {w}x{h}: at least {MIN_UPLOAD_SIDE} pixels per side")


def _square_box(w: int, h: int) -> tuple[int, int, int, int]:
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return left, top, left + s, top + s


def center_square(img: Image.Image, size: int) -> torch.Tensor:
    """Center-crop to a square, resize to ``size``: ``[3, size, size]`` in [0, 1]. Any input size."""
    _check_upload(img)
    img = to_rgb(img).crop(_square_box(*img.size)).resize((size, size), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)  # [3, size, size]


def mask_from_editor(editor: Mapping[str, Any] | None, size: int) -> tuple[Image.Image, torch.Tensor]:
    """The uploaded image and the painted mask from a ``gr.ImageEditor`` value (PIL images).

    Returns the background (as uploaded) and the mask ``[size, size]`` in [0, 1] (1 = regenerate),
    cropped and resized exactly as :func:`center_square` crops the image. Every painted layer counts:
    a pixel is masked where any layer is opaque.
    """
    background = editor.get("background") if editor else None
    if background is None:
        raise InputError("upload an image first")
    _check_upload(background)
    W, H = background.size
    painted = np.zeros((H, W), dtype=np.float32)
    for layer in editor.get("layers") or []:
        if layer is None:
            continue
        alpha = layer.convert("RGBA").getchannel("A")
        if alpha.size != (W, H):  # a layer drawn on a canvas of another size: stretch it over the image
            alpha = alpha.resize((W, H), Image.Resampling.NEAREST)
        painted = np.maximum(painted, np.asarray(alpha, dtype=np.float32) / 255)
    if not painted.any():
        raise InputError("paint the region to regenerate with the brush first")
    return background, square_mask(painted, size)


def square_mask(mask_HW: np.ndarray, size: int) -> torch.Tensor:
    """A mask in [0, 1] over an image (1 = regenerate) cropped and resized exactly as :func:`center_square`
    crops and resizes that image: ``[size, size]`` in [0, 1]."""
    H, W = mask_HW.shape
    mask = Image.fromarray((np.clip(mask_HW, 0, 1) * 255).round().astype(np.uint8), mode="L").crop(_square_box(W, H))
    mask = mask.resize((size, size), Image.Resampling.BOX)  # area average: edit() thresholds per token
    return torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255)


def shade(image_3HW: torch.Tensor, mask_HW: torch.Tensor) -> Image.Image:
    """The image as the model sees it, the region to regenerate tinted magenta."""
    tint = torch.tensor([1.0, 0.0, 1.0])[:, None, None]
    m = mask_HW[None] * 0.6
    return to_pil((image_3HW * (1 - m) + tint * m)[None])[0]


# ----------------------------------------------------------------------------- sampling


def _request(
    loaded: LoadedModel, label: Any, num_images: Any, settings: SamplingSettings | None, changes: dict[str, Any]
) -> tuple[list[int], list[int], SamplingSettings]:
    """Checked ``(labels, per-image seeds, settings)`` of a generate request: image i gets ``seed + i``."""
    label = parse_label(label, loaded.num_classes)
    n, s = request_settings(settings if settings is not None else loaded.sampling, num_images, **changes)
    return [label] * n, [s.seed + i for i in range(n)], s


def generate_progressive(
    loaded: LoadedModel, label: Any, num_images: Any = 1, settings: SamplingSettings | None = None, **changes: Any
) -> Iterator[tuple[int, list[Image.Image]]]:
    """``(scale index, images)`` after every scale; the last images equal :func:`generate_images`'s.

    Image i is seeded with ``seed + i`` on its own generator, so it depends only on its class and
    seed, never on how many images were asked for (see the seeding rule in :mod:`var.sample`).
    ``settings`` and ``changes``: the module docstring's rule (default: the model's settings).
    """
    labels, seeds, s = _request(loaded, label, num_images, settings, changes)
    for step in generate(loaded.model, loaded.vae, labels, s, seed=seeds):
        yield step.si, to_pil(decode(loaded.vae, step.f_hat, s.precision))


def generate_images(
    loaded: LoadedModel, label: Any, num_images: Any = 1, settings: SamplingSettings | None = None, **changes: Any
) -> list[Image.Image]:
    """``num_images`` images of class ``label`` (image i from seed ``seed + i``), checked arguments;
    ``settings`` and ``changes`` as in :func:`generate_progressive`."""
    labels, seeds, s = _request(loaded, label, num_images, settings, changes)
    return to_pil(sample(loaded.model, loaded.vae, labels, s, seed=seeds))


def edit_image(
    loaded: LoadedModel,
    image: Image.Image | torch.Tensor,
    mask: torch.Tensor,
    label: Any,
    settings: SamplingSettings | None = None,
    *,
    return_tokens: bool = False,
    **changes: Any,
) -> Image.Image | tuple[Image.Image, list[torch.Tensor]]:
    """Regenerate the masked part of ``image`` as class ``label`` (``num_classes`` = no class: in-painting).

    ``image``: a PIL image of any size (center-cropped and resized to the model's resolution) or a
    ``[3, H, W]`` tensor in [0, 1] already at it. ``mask``: ``[h, w]`` in [0, 1], 1 = regenerate.
    ``settings`` and ``changes``: the module docstring's rule (default: the model's settings); the image
    is drawn with the settings' seed. ``return_tokens`` also returns the tokens of every scale
    (``[1, pn*pn]`` each), as :func:`var.edit.edit`.
    """
    label = parse_label(label, loaded.num_classes, allow_null=True)
    _, s = request_settings(settings if settings is not None else loaded.sampling, 1, **changes)
    size = loaded.vae.image_size
    image_3HW = center_square(image, size) if isinstance(image, Image.Image) else image
    if tuple(image_3HW.shape) != (3, size, size):
        raise InputError(f"the image must be 3x{size}x{size}, got {'x'.join(map(str, image_3HW.shape))}")
    mask = torch.as_tensor(mask, dtype=torch.float32)
    if mask.ndim != 2:
        raise InputError(f"the mask must be 2-D, got shape {tuple(mask.shape)}")
    out, idx = edit(loaded.model, loaded.vae, image_3HW, mask, label, s, seed=[s.seed], return_tokens=True)
    return (to_pil(out)[0], idx) if return_tokens else to_pil(out)[0]
