"""`var edit`: the web UI's Edit tab from the command line.

Regenerates the masked part of one image - in-painting (no class), class-conditional editing (a
class), out-painting (a mask over the border) - with the Edit tab's :func:`app.logic.edit_image`: the
image is center-cropped to a square and resized to the model's resolution, and the mask, given as a
mask image of the same size as the image (white = regenerate) or as a pixel box, is cropped and resized
with it. The flags are parsed as the page's widgets are (:func:`var.settings.parse_changes`, and
:func:`app.logic.parse_label` for a class id). The result is written atomically as a PNG, under a lock
(``.OUT.lock`` beside it, scaffold.lock) that refuses a second `var edit` to the same file while this
one runs::

    var edit --model demo/model --image in.png --box 8,8,24,24 --class 3 --out out.png
    var edit --model d16 --image photo.jpg --mask mask.png --class "golden retriever" --out dog.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from app.logic import InputError, center_square, edit_image, parse_label, square_mask
from scaffold.io import write_atomic
from scaffold.lock import folder_lock
from tokenizer.data import read_rgb
from var.settings import add_sampling_arguments, given_settings

__all__ = ["add_arguments", "lock_file", "mask_array", "parse_class", "run"]


def lock_file(out: Path) -> Path:
    """The lock `var edit` holds while it writes `out`: ``.NAME.lock`` beside it (scaffold.lock)."""
    return out.with_name(f".{out.name}.lock")


def parse_class(value: str, class_names: list[str]) -> int:
    """``none`` (the null class: plain in-painting), a class id, or a class name (any case): its index."""
    text = value.strip()
    if text.lower() == "none":
        return len(class_names)
    lowered = [name.lower() for name in class_names]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    if not text.lstrip("-").isdigit():
        raise InputError(f"--class {value!r} is neither none, a class id nor a class name of this model")
    return parse_label(text, len(class_names))


def _parse_box(text: str, width: int, height: int) -> tuple[int, int, int, int]:
    try:
        x0, y0, x1, y1 = (int(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--box must be X0,Y0,X1,Y1 in pixels of the image, got {text!r}") from None
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise InputError(f"--box {text} is not a non-empty box inside the {width}x{height} image")
    return x0, y0, x1, y1


def mask_array(mask_path: str | None, box: str | None, width: int, height: int) -> np.ndarray:
    """The mask over the whole image, ``[height, width]`` in [0, 1] (1 = regenerate), from a mask image
    (its luminance; it must have the image's size) or a pixel box."""
    if box is not None:
        x0, y0, x1, y1 = _parse_box(box, width, height)
        mask = np.zeros((height, width), dtype=np.float32)
        mask[y0:y1, x0:x1] = 1
        return mask
    path = Path(mask_path)
    if not path.is_file():
        raise InputError(f"mask not found: {path}")
    image = read_rgb(path)
    if image.size != (width, height):
        raise InputError(
            f"the mask {path} is {image.size[0]}x{image.size[1]} but the image is {width}x{height}: "
            "draw the mask over the image itself, or give --box"
        )
    mask = np.asarray(image.convert("L"), dtype=np.float32) / 255
    if not (mask > 0.5).any():
        raise InputError(f"the mask {path} is black everywhere: white marks the region to regenerate")
    return mask


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="an exported model folder, a published checkpoint file, or d16, d20, d24, d30"
    )
    parser.add_argument("--image", required=True, help="the image to edit (any size; center-cropped to a square)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--mask", help="a mask image of the image's size: white = regenerate, black = keep")
    where.add_argument("--box", help="X0,Y0,X1,Y1: the pixel box of the image to regenerate")
    parser.add_argument(
        "--class",
        dest="label",
        default="none",
        help="the class of the result: an id, a name, or none for plain in-painting (default: none)",
    )
    parser.add_argument("--out", required=True, help="the edited image, a PNG")
    add_sampling_arguments(parser, seed_help="seed, 0 to 2**32-1 (default: the model's, 0)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")


def run(args: argparse.Namespace) -> int:
    from var.export import load_model

    # Everything the command line alone decides is parsed and checked before loading the model (which may
    # take a minute); the class, a name or an id, once the model's class names are there. Each once.
    image_path, out = Path(args.image), Path(args.out)
    if not image_path.is_file():
        raise InputError(f"image not found: {image_path}")
    if out.suffix.lower() != ".png":
        raise InputError(f"--out must name a .png file, got {args.out!r}")
    image = read_rgb(image_path)
    mask = mask_array(args.mask, args.box, *image.size)
    changes = given_settings(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    loaded = load_model(args.model, device)
    label = parse_class(args.label, loaded.class_names)
    settings = loaded.sampling.replace(**changes)
    size = loaded.vae.image_size
    image_3HW, mask_HW = center_square(image, size), square_mask(mask, size)
    with folder_lock(out, lock_file=lock_file(out)):  # a second `var edit` to the same --out is refused
        result = edit_image(loaded, image_3HW, mask_HW, label, settings)
        write_atomic(out, lambda f: result.save(f, format="PNG"))
    what = "in-painted" if label == loaded.num_classes else f"edited as class {label} ({loaded.class_names[label]})"
    share = float((mask_HW > 0.5).float().mean())
    print(f"{image_path} {what}, {share:.0%} of it regenerated -> {out}")
    return 0
