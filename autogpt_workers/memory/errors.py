"""Errors of the memory layer; every vendor exception is translated into one of these at the boundary.

They hang under the platform's one root (``autogpt_workers.errors``)::

    AutogptWorkersError
    ├── UsageError
    │   └── MemoryConfigError       -- a store or model that cannot work as configured (wrong dims, no extra)
    └── RunError
        └── MemoryStoreError        -- a memory operation failed at run time
            ├── MemoryUnavailable   -- the store or the embeddings endpoint is down, slow or refusing: transient
            └── MemoryRequestError  -- the store or endpoint rejected the request: retrying will not help

Memory is an aid, never a reason to fail a step: the service that the agent and the commands use catches
``MemoryStoreError`` and carries on without memories (see ``memory.service``). Every error keeps its
constructor arguments in ``args`` so it pickles.
"""

from __future__ import annotations

from autogpt_workers.errors import RunError, UsageError


class MemoryConfigError(UsageError):
    """The memory layer is configured in a way that cannot work (an operator's mistake)."""


class MemoryStoreError(RunError):
    """A memory operation failed while running."""


class MemoryUnavailable(MemoryStoreError):
    """Connection refused, timeout, 5xx, rate limit: worth retrying later."""


class MemoryRequestError(MemoryStoreError):
    """The backend rejected the request (bad schema, bad input, no permission)."""
