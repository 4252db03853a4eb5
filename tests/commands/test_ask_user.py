"""``ask_user`` hands the human's answer to the model; without one it says so."""

from __future__ import annotations

import dataclasses

import pytest

from autogpt_workers.commands import CommandContext
from autogpt_workers.commands.ask_user import AskUser, AskUserArgs
from autogpt_workers.errors import CommandError


def test_the_answer_is_the_observation(ctx: CommandContext) -> None:
    answered = dataclasses.replace(ctx, human_input="  Use the blue one.  ")
    result = AskUser().run(AskUserArgs(question="Which colour?"), answered)
    assert result.output == "The human answered: Use the blue one."


def test_no_answer_is_a_clear_error(ctx: CommandContext) -> None:
    with pytest.raises(CommandError, match="nobody answered the question 'Which colour\\?'"):
        AskUser().run(AskUserArgs(question="Which colour?"), ctx)
