"""How much an observation is worth remembering, from 0 to 1; long-term memory keeps those at or above the
threshold (``AUTOGPT_MEMORY_IMPORTANCE_THRESHOLD``, 0.5 by default).

A heuristic, stated plainly:

- the final answer (``finish``) 0.9: what a task concluded is what later tasks most want to know;
- a command that failed 0.6: a lesson (this path does not exist, that site is not allowed);
- a command that changed something (files written, code run, a page fetched) 0.55;
- a read-only look (reading or listing files) 0.35: it is in the workspace and can be looked at again;
- the model's own malformed reply 0.1: noise;
- ``remember`` and ``recall`` 0: the first stores on purpose already, the second would echo memories back.

Observations shorter than a few characters lose 0.2.
"""

from __future__ import annotations

NOT_STORED = ("remember", "recall")
CHANGING = ("write_file", "execute_python", "execute_shell", "web_fetch", "ask_user")
READ_ONLY = ("read_file", "list_files")


def observation_importance(command: str | None, output: str, *, is_error: bool, is_last: bool) -> float:
    """The importance of one step's observation (see the module docstring)."""
    if command in NOT_STORED:
        return 0.0
    if command is None:
        return 0.1
    if is_last:
        score = 0.9
    elif is_error:
        score = 0.6
    elif command in READ_ONLY:
        score = 0.35
    elif command in CHANGING:
        score = 0.55
    else:
        score = 0.5
    if len(output.strip()) < 8:
        score -= 0.2
    return max(0.0, min(1.0, score))
