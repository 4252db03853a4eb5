"""Chat messages that never change once built (those of committed steps), with their JSON text and their token
estimate worked out once per process.

Every think sends the task's whole history again. Rebuilt, re-measured and re-encoded each time, the history made a
step's CPU grow with the number of steps before it, and a task's with the square of its length. The messages of a
committed step are now built once (``agent.context``), and these two derived values are kept on them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn

from autogpt_workers.agent.tool_json import dumps


class FrozenMessage(dict[str, Any]):
    """A chat message that refuses to be changed, so what is derived from it stays true."""

    __slots__ = ("_json", "_tokens")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._json: str | None = None
        self._tokens: int | None = None

    def json_text(self) -> str:
        """``dumps(self)``, encoded on the first call."""
        if self._json is None:
            self._json = dumps(self)
        return self._json

    def tokens(self, estimate: Callable[[dict[str, Any]], int]) -> int:
        """``estimate(self)``, worked out on the first call (the estimate is the same function throughout)."""
        if self._tokens is None:
            self._tokens = estimate(self)
        return self._tokens

    def __copy__(self) -> FrozenMessage:
        return FrozenMessage(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> FrozenMessage:
        return FrozenMessage(copy.deepcopy(dict(self), memo))

    def __reduce__(self) -> tuple[type[FrozenMessage], tuple[dict[str, Any]]]:
        return FrozenMessage, (dict(self),)

    def _refuse(self, *_args: Any, **_kwargs: Any) -> NoReturn:
        raise TypeError("a FrozenMessage cannot be changed; copy it with dict(message)")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = __ior__ = _refuse


class FrozenGroup(list[FrozenMessage]):
    """The messages of one committed step, which never change either, with their tokens' total worked out once: the
    window check sums the groups of the whole history at every think."""

    __slots__ = ("_tokens",)

    def __init__(self, messages: Iterable[dict[str, Any]] = ()) -> None:
        super().__init__(m if type(m) is FrozenMessage else FrozenMessage(m) for m in messages)
        self._tokens: int | None = None

    def tokens(self, estimate: Callable[[dict[str, Any]], int]) -> int:
        """The sum of ``estimate`` over the messages, worked out on the first call."""
        if self._tokens is None:
            self._tokens = sum(m.tokens(estimate) for m in self)
        return self._tokens

    def __copy__(self) -> FrozenGroup:
        return FrozenGroup(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> FrozenGroup:
        return FrozenGroup(copy.deepcopy(list(self), memo))

    def __reduce__(self) -> tuple[type[FrozenGroup], tuple[list[FrozenMessage]]]:
        return FrozenGroup, (list(self),)

    def _refuse(self, *_args: Any, **_kwargs: Any) -> NoReturn:
        raise TypeError("a FrozenGroup cannot be changed; copy it with list(group)")

    __setitem__ = __delitem__ = append = extend = insert = pop = remove = clear = sort = reverse = _refuse
    __iadd__ = __imul__ = _refuse


class History:
    """The messages of a task's committed steps in order, with their token estimate's total and their JSON text
    (each message's, comma-joined), built up one step at a time (``agent.context``): a think that finds them for the
    steps before its newest adds only the newest, instead of passing over every step of the history again (which made
    a step's CPU grow with the steps before it). Never changed once built, so a copy is safe to share."""

    __slots__ = ("before", "json", "messages", "steps", "tokens")

    def __init__(
        self,
        before: list[Any],
        steps: list[tuple[int, Sequence[dict[str, Any]]]],
        messages: list[dict[str, Any]],
        tokens: int,
        json: str,
    ) -> None:
        # the step records these were built from, in order, but the newest (the one that keeps this): a later think
        # checks its own against them
        self.before = before
        self.steps = steps  # (step index, the step's messages), as ``memory.window.fit_to_window`` takes them
        self.messages = messages
        self.tokens = tokens
        self.json = json

    def extended(self, before: list[Any], steps: list[tuple[int, Sequence[dict[str, Any]]]], tokens: int) -> History:
        """These followed by more steps (``before``: the records to add to ``self.before``), their messages and
        their ``tokens``' total."""
        messages = [m for _, group in steps for m in group]
        texts = ",".join(_text(m) for m in messages)
        return History(
            self.before + before,
            self.steps + steps,
            self.messages + messages,
            self.tokens + tokens,
            self.json + "," + texts if self.json and texts else self.json or texts,
        )


EMPTY_HISTORY = History([], [], [], 0, "")


class HistoryMessages(list[dict[str, Any]]):
    """A step's messages (what comes before the history, the history, what comes after) that know the history's
    JSON text, so ``messages_json`` encodes only what is around it."""

    __slots__ = ("history_json", "span")

    def __init__(self, head: list[dict[str, Any]], history: History, tail: list[dict[str, Any]]) -> None:
        super().__init__([*head, *history.messages, *tail])
        self.span = (len(head), len(head) + len(history.messages))
        self.history_json = history.json

    def _refuse(self, *_args: Any, **_kwargs: Any) -> NoReturn:
        raise TypeError("the messages of a think cannot be changed; copy them with list(messages)")

    __setitem__ = __delitem__ = append = extend = insert = pop = remove = clear = sort = reverse = _refuse
    __iadd__ = __imul__ = _refuse

    def __reduce__(self) -> tuple[type[list[dict[str, Any]]], tuple[list[dict[str, Any]]]]:
        return list, (list(self),)  # a copy (shallow, deep or pickled) is a plain list of the same messages


def _text(message: dict[str, Any]) -> str:
    return message.json_text() if type(message) is FrozenMessage else dumps(message)


def messages_json(messages: list[dict[str, Any]]) -> str:
    """``dumps(messages)``, with each ``FrozenMessage``'s text from its cache, and the history's text from its
    ``HistoryMessages``."""
    if type(messages) is HistoryMessages and messages.history_json:
        start, stop = messages.span
        parts = [*(_text(m) for m in messages[:start]), messages.history_json, *(_text(m) for m in messages[stop:])]
        return "[" + ",".join(parts) + "]"
    return "[" + ",".join(_text(m) for m in messages) + "]"
