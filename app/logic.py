"""The web UI's logic with no Gradio in it: request parsing, upload checks, image and mask preparation,
:func:`generate_images` / :func:`generate_progressive` (sampling) and :func:`edit_image` (editing).

A request is parsed once, where it enters (:func:`parse_request`, called by app/web.py's handlers): a class
picker entry or number becomes the class index of each image, and the widgets' values (text, numbers, a
speed name) become one :class:`var.settings.SamplingSettings`, the model's with the speed's fast modes and
the given fields over them, checked by the rule of `var sample` and `var edit` (:func:`var.settings.parse_changes`:
the same ranges and words). The handlers take those labels and that settings object and hand them on to
:mod:`var.sample` / :mod:`var.edit` as they are: nothing after the boundary parses a label or builds settings
again. Image i of a request is seeded with ``seed + i`` (:func:`image_seeds`). Every refusal is a
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
from var.settings import MAX_SEED, SamplingSettings, SettingsError, count, integer, parse_changes

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
    "image_seeds",
    "mask_from_editor",
    "parse_label",
    "parse_request",
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
    ``changes`` of its fields (text, numbers; ``None`` keeps the default), built once."""
    n = count(num_images, "number of images", 1, MAX_IMAGES)
    s = defaults.replace(**parse_changes(changes, speed))
    if s.seed + n - 1 > MAX_SEED:  # image i uses seed + i: the last one must still be a seed
        raise SettingsError(
            f"seed must be at most {MAX_SEED - n + 1} for {n} images (image i uses seed + i), got {s.seed}", "seed"
        )
    return n, s


def parse_request(
    loaded: LoadedModel,
    label: Any,
    num_images: Any = 1,
    speed: str | None = None,
    *,
    allow_null: bool = False,
    **changes: Any,
) -> tuple[list[int], SamplingSettings]:
    """A request of the page or the API, parsed: ``(labels, settings)``, the class index of each of the
    ``num_images`` images (:func:`parse_label`; ``allow_null`` for an edit) and the model's settings with
    ``speed`` and ``changes`` over them (:func:`request_settings`). The handlers take these as they are."""
    label = parse_label(label, loaded.num_classes, allow_null)
    n, settings = request_settings(loaded.sampling, num_images, speed, **changes)
    return [label] * n, settings


def image_seeds(settings: SamplingSettings, num_images: int) -> list[int]:
    """The seed of each image of a request, ``seed + i`` for image i, each drawn on its own generator: an
    image depends only on its class and seed, never on how many were asked for (var.sample's seeding rule)."""
    return [settings.seed + i for i in range(num_images)]


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


def generate_progressive(
    loaded: LoadedModel, labels: Sequence[int], settings: SamplingSettings
) -> Iterator[tuple[int, list[Image.Image]]]:
    """``(scale index, images)`` after every scale; the last images equal :func:`generate_images`'s.

    ``labels`` (a class index per image) and ``settings``: a parsed request (:func:`parse_request`);
    image i is seeded with ``seed + i`` (:func:`image_seeds`).
    """
    for step in generate(loaded.model, loaded.vae, labels, settings, seed=image_seeds(settings, len(labels))):
        yield step.si, to_pil(decode(loaded.vae, step.f_hat, settings.precision))


def generate_images(loaded: LoadedModel, labels: Sequence[int], settings: SamplingSettings) -> list[Image.Image]:
    """The images of a parsed request (:func:`parse_request`): one per label, image i from seed ``seed + i``."""
    return to_pil(sample(loaded.model, loaded.vae, labels, settings, seed=image_seeds(settings, len(labels))))


def edit_image(
    loaded: LoadedModel,
    image: Image.Image | torch.Tensor,
    mask: torch.Tensor,
    label: int,
    settings: SamplingSettings,
    *,
    return_tokens: bool = False,
) -> Image.Image | tuple[Image.Image, list[torch.Tensor]]:
    """Regenerate the masked part of ``image`` as class ``label`` (``num_classes`` = no class: in-painting).

    ``image``: a PIL image of any size (center-cropped and resized to the model's resolution) or a
    ``[3, H, W]`` tensor in [0, 1] already at it. ``mask``: ``[h, w]`` in [0, 1], 1 = regenerate.
    ``label`` and ``settings``: a parsed request (:func:`parse_request` with ``allow_null``, or `var edit`'s
    flags); the image is drawn with the settings' seed. ``return_tokens`` also returns the tokens of every
    scale (``[1, pn*pn]`` each), as :func:`var.edit.edit`.
    """
    size = loaded.vae.image_size
    image_3HW = center_square(image, size) if isinstance(image, Image.Image) else image
    if tuple(image_3HW.shape) != (3, size, size):
        raise InputError(f"the image must be 3x{size}x{size}, got {'x'.join(map(str, image_3HW.shape))}")
    mask = torch.as_tensor(mask, dtype=torch.float32)
    if mask.ndim != 2:
        raise InputError(f"the mask must be 2-D, got shape {tuple(mask.shape)}")
    out, idx = edit(
        loaded.model, loaded.vae, image_3HW, mask, label, settings, seed=[settings.seed], return_tokens=True
    )
    return (to_pil(out)[0], idx) if return_tokens else to_pil(out)[0]
