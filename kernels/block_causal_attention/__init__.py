"""Block-causal softmax attention over a next-scale token sequence."""

from .ops import block_causal_attention

__all__ = ["block_causal_attention"]
