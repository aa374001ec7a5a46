"""GSPN line scan and its gate normalisation."""

from .ops import gspn_normalize_gates, gspn_scan

__all__ = ["gspn_normalize_gates", "gspn_scan"]
