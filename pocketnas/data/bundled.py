"""The real faces shipped inside the package: ORL (40 people x 10 images, aligned 112x112), with its credit."""
from __future__ import annotations

import os
from ..errors import MissingFileError


def orl_root() -> str:
    """Folder of the bundled ORL faces (``sN/K.png``); see ``CREDIT.txt`` there."""
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "orl")
    if not os.path.isdir(os.path.join(root, "s1")):
        raise MissingFileError(f"the bundled ORL faces are missing from {root}; reinstall pocketnas")
    return root
