"""Pyramid neighborhood attention over a next-scale token sequence."""

from .ops import neighborhood_attention

__all__ = ["neighborhood_attention"]
