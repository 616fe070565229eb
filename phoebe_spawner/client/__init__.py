"""``phoebe_spawner.client``: use a phoebe-spawner hub from notebooks and scripts.

>>> from phoebe_spawner.client import PhoebeClient
>>> with PhoebeClient() as client:            # inside JupyterHub: no arguments needed
...     client.set_value("period@binary", 2.5)
...     client.add_dataset("lc", compute_times=np.linspace(0, 1, 201))
...     model = client.run_compute()           # progress bar; Ctrl-C cancels on the worker

See ``docs/client.md``. It is its own distribution, ``phoebe-spawner-client``
(``packaging/client``), which requires only numpy and orjson; tqdm draws progress bars
and astropy turns unit-carrying values into Quantities when they are installed (its
extras ``progress``, ``units``, ``widgets`` and ``all``).
"""

from ._client import PhoebeClient
from ._config import ConfigurationError
from ._errors import (
    AuthenticationError,
    BadRequest,
    CommandTimeout,
    ComputationCancelled,
    Conflict,
    HubConnectionError,
    HubTimeout,
    JobCancelled,
    JobFailed,
    LimitReached,
    PermissionDeniedError,
    PhoebeClientError,
    PhoebeError,
    RateLimited,
    RequestTooLarge,
    ServerError,
    SessionEnded,
    SessionNotFound,
    WorkerUnavailable,
)
from ._http import SSEEvent

__all__ = [
    "AuthenticationError",
    "BadRequest",
    "CommandTimeout",
    "ComputationCancelled",
    "ConfigurationError",
    "Conflict",
    "HubConnectionError",
    "HubTimeout",
    "JobCancelled",
    "JobFailed",
    "LimitReached",
    "PermissionDeniedError",
    "PhoebeClient",
    "PhoebeClientError",
    "PhoebeError",
    "RateLimited",
    "RequestTooLarge",
    "SSEEvent",
    "ServerError",
    "SessionEnded",
    "SessionNotFound",
    "WorkerUnavailable",
]
