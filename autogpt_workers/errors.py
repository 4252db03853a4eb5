"""One error root for the platform.

    AutogptWorkersError
    ├── ControlFlow                 -- not failures: the caller decides what happens next
    │   ├── LeaseHeld               -- another live worker owns this step; try again later
    │   └── Fenced                  -- our lease was taken over; drop the work, commit nothing
    ├── UsageError                  -- a developer's or operator's mistake; never retried
    │   ├── ConfigError             -- settings refused (unsafe or inconsistent)
    │   └── UnknownCommand          -- a command name nobody registered
    └── RunError                    -- something failed while running a task
        ├── BudgetExceeded          -- the task used up a budget (steps, tokens, cost, wall time)
        ├── LLMError
        │   ├── LLMTransientError   -- 429 / 5xx / timeout / connection: worth retrying later
        │   │   └── LLMRateLimited  -- the server's Retry-After is longer than we wait in-process: hand back
        │   └── LLMPermanentError   -- 4xx other than 429, refused auth, no such model
        ├── CommandError            -- a command failed; its message is an observation for the model
        │   └── WorkspaceEscape     -- a path tried to leave the task's workspace
        └── StepPoisoned            -- a step was delivered too often without committing

Every error is picklable (Celery ships them between processes): each keeps its constructor
arguments in ``args``. Errors never log themselves.
"""

from __future__ import annotations


class AutogptWorkersError(Exception):
    """Root of every error this package raises on purpose."""


class ControlFlow(AutogptWorkersError):
    """Not a failure: tells the caller to do something else."""


class LeaseHeld(ControlFlow):
    def __init__(self, retry_in: float = 1.0) -> None:
        super().__init__(retry_in)
        self.retry_in = retry_in


class Fenced(ControlFlow):
    """Our lease on a step was taken over; the work done must not be committed."""


class UsageError(AutogptWorkersError):
    """A developer's or operator's mistake."""


class ConfigError(UsageError):
    pass


class UnknownCommand(UsageError):
    pass


class RunError(AutogptWorkersError):
    """A failure while running a task."""


class BudgetExceeded(RunError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LLMError(RunError):
    pass


class LLMTransientError(LLMError):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message, retry_after)
        self.retry_after = retry_after

    def __str__(self) -> str:
        return str(self.args[0])


class LLMRateLimited(LLMTransientError):
    """The server asked us to wait (``Retry-After``) longer than the in-process backoff cap: the step is handed
    back to run again after ``retry_after`` instead of holding a worker thread that long."""


class LLMPermanentError(LLMError):
    pass


class CommandError(RunError):
    pass


class WorkspaceEscape(CommandError):
    pass


class StepPoisoned(RunError):
    pass
