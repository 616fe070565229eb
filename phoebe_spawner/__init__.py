"""phoebe-spawner: a hub that gives every user their own PHOEBE worker sessions."""

from ._version import __version__

__all__ = ["__version__"]
