"""Training machinery shared by ``pocketnas train`` and ``pocketnas search``."""
