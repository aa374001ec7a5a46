"""Depthwise 2-D convolution applied to each scale's map of a next-scale token sequence."""

from .ops import ragged_depthwise_conv2d

__all__ = ["ragged_depthwise_conv2d"]
