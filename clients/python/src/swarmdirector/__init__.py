"""SwarmDirector's Python client and worker helper.

- `Client` / `AsyncClient`: swarmd's HTTP API (needs httpx).
- `swarmdirector.models`: typed tasks, pages, status, events.
- `swarmdirector.errors`: `ApiError` and its subclasses.
- `swarmdirector.worker`: turns a Python function into an `agent = "process"`
  worker (standard library only, so importing it needs no httpx).
"""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Loaded on first use, so that `swarmdirector.worker` (run by swarmd as a
# worker process, perhaps where httpx is not installed) stays light.
_LAZY = {
    "Client": "client",
    "AsyncClient": "client",
    "MAX_BATCH": "client",
}

from . import errors as _errors, models as _models  # noqa: E402  (standard library only)
from .errors import *  # noqa: E402,F401,F403
from .models import *  # noqa: E402,F401,F403

if TYPE_CHECKING:
    from .client import MAX_BATCH, AsyncClient, Client  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AsyncClient", "Client", "MAX_BATCH", *_errors.__all__, *_models.__all__]
