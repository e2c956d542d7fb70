"""The version of rtplan (one place, read by the package and by modules it loads)."""

__version__ = "0.1.0"
