"""The package version (a leaf: setup.py reads it, every module may import it)."""
__version__ = "0.1.0"
