"""ImageNet-1k class names in label order (the published VAR checkpoints' 1000 classes).

The list is the widely used Keras `imagenet_class_index.json` naming, underscores as spaces. Two
names occur twice (134/517 "crane", 638/639 "maillot"); pickers show the index beside the name.
"""

from importlib.resources import files

__all__ = ["IMAGENET_CLASSES"]

IMAGENET_CLASSES: tuple[str, ...] = tuple(
    files(__package__).joinpath("imagenet_classes.txt").read_text(encoding="utf-8").splitlines()
)
assert len(IMAGENET_CLASSES) == 1000, "var/imagenet_classes.txt must list 1000 names"
