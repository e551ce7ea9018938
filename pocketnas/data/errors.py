"""Errors for damaged or malformed data files; every message names the file and the record (or pair)."""
from ..errors import PocketnasError



class DataFormatError(PocketnasError, ValueError):
    """A data file that cannot be read as what it claims to be."""
