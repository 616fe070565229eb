"""phoebe-spawner: a hub that gives every user their own PHOEBE worker sessions.

``phoebe_spawner.client`` is a distribution of its own (phoebe-spawner-client), which
may be installed without this one (``phoebe_spawner`` is then a namespace package) or
in another ``sys.path`` entry than this one: ``extend_path`` finds it there too.
"""

from pkgutil import extend_path

from ._version import __version__

__path__ = extend_path(__path__, __name__)

__all__ = ["__version__"]
