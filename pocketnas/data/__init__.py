"""Face data: insightface RecordIO packs and .bin verification sets (read and written without mxnet), image
folders, and the bundled ORL faces."""
from .binfile import read_bin, write_bin
from .bundled import orl_root
from .errors import DataFormatError
from .folder import FolderDataset
from .record_dataset import RecordDataset
from .transforms import NORMALISATIONS, normalize

__all__ = ["RecordDataset", "FolderDataset", "read_bin", "write_bin", "orl_root", "normalize", "NORMALISATIONS",
           "DataFormatError"]
