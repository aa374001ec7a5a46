"""Block-causal external attention with learned per-head memories."""

from .ops import external_attention

__all__ = ["external_attention"]
