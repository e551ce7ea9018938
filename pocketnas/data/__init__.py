"""Face data: image folders (and, in later modules, RecordIO packs and .bin verification sets)."""
from .bundled import orl_root
from .folder import FolderDataset
from .transforms import NORMALISATIONS, normalize

__all__ = ["FolderDataset", "orl_root", "normalize", "NORMALISATIONS"]
