"""Agent profiles: a named role with its system prompt, command allow-list, budget defaults and approval classes.

A profile is a data file, ``autogpt_workers/profiles/<name>.yaml`` (or ``<name>.yaml`` in an operator's
directory, ``AUTOGPT_PROFILES_DIR``, which may add profiles or replace shipped ones)::

    name: execution
    description: Does the work: writes files and runs code in the sandbox.
    system: |-
      You are ...
    allowed_commands: [read_file, write_file, list_files, execute_python, execute_shell, finish]
    budget: {max_steps: 30}
    approval: []          # side-effect classes a human approves first: read_only, workspace, external

A task picks a profile by name (``TaskSubmission.profile``). At submission ``apply_profile`` fills in what the
caller left out (allow-list, budget, approval classes); at every think step the agent uses the profile's system
prompt. The seed's four agents ship as examples: ``governance``, ``capability``, ``execution``, ``evolution``.

Only pydantic, yaml and the agent's ``Budget`` are imported here, so both the API and the agent may use it.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from autogpt_workers.agent.types import Budget
from autogpt_workers.errors import UsageError

if TYPE_CHECKING:
    from autogpt_workers.contracts import TaskSubmission

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SideEffectClass = Literal["read_only", "workspace", "external"]


class UnknownProfile(UsageError):
    """A task asked for a profile nobody defined."""


class Profile(BaseModel):
    """One agent profile, as validated from its YAML file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN.pattern)
    description: str = Field(min_length=1)
    system: str = Field(min_length=1, description="The system prompt for this role.")
    allowed_commands: list[str] | None = Field(default=None, description="None: every registered command.")
    budget: Budget = Field(default_factory=Budget)
    approval: list[SideEffectClass] = Field(
        default_factory=list, description="Side-effect classes whose commands wait for a human's approval."
    )


class ProfileCatalog:
    """Profiles by name: the shipped ones, overridden and extended by an operator's directory."""

    def __init__(self, extra_dir: Path | None = None) -> None:
        self.extra_dir = extra_dir

    def _sources(self) -> list[Traversable]:
        sources: list[Traversable] = [importlib.resources.files("autogpt_workers").joinpath("profiles")]
        if self.extra_dir is not None:
            sources.append(self.extra_dir)  # later sources win
        return sources

    def names(self) -> list[str]:
        found: set[str] = set()
        for source in self._sources():
            if source.is_dir():
                found.update(p.name[: -len(".yaml")] for p in source.iterdir() if p.name.endswith(".yaml"))
        return sorted(name for name in found if NAME_PATTERN.match(name))

    def get(self, name: str) -> Profile:
        """The profile called ``name``; ``UnknownProfile`` (naming the known ones) if there is none."""
        if not NAME_PATTERN.match(name):
            raise UnknownProfile(f"{name!r} is not a valid profile name")
        for source in reversed(self._sources()):
            path = source.joinpath(f"{name}.yaml")
            if path.is_file():
                return _parse(path.read_text(encoding="utf-8"), f"{name}.yaml", name)
        raise UnknownProfile(f"unknown profile {name!r}; known profiles: {', '.join(self.names()) or 'none'}")

    def all(self) -> list[Profile]:
        return [self.get(name) for name in self.names()]


@functools.lru_cache(maxsize=256)
def _parse(text: str, where: str, name: str) -> Profile:
    try:
        data: Any = yaml.safe_load(text)
        profile = Profile.model_validate(data)
    except (yaml.YAMLError, ValidationError) as exc:
        raise UsageError(f"profile file {where} is invalid: {exc}") from exc
    if profile.name != name:
        raise UsageError(f"profile file {where} declares the name {profile.name!r}; it must be {name!r}")
    return profile


def apply_profile(submission: TaskSubmission, catalog: ProfileCatalog | None = None) -> TaskSubmission:
    """``submission`` with its profile's defaults for what the caller left out (allow-list, budget, approval).

    Raises ``UnknownProfile`` for a profile nobody defined (a 4xx for the API). Fields the caller set win; within
    ``budget``, each limit the caller set wins and the profile's fill the others.
    """
    if submission.profile is None:
        return submission
    profile = (catalog or ProfileCatalog()).get(submission.profile)
    given = submission.model_fields_set
    update: dict[str, Any] = {}
    if submission.allowed_commands is None and profile.allowed_commands is not None:  # null: not given
        update["allowed_commands"] = list(profile.allowed_commands)
    if "budget" not in given:
        update["budget"] = profile.budget
    else:  # field by field: the limits the caller named, the profile's for the rest
        own = submission.budget
        update["budget"] = profile.budget.model_copy(update={f: getattr(own, f) for f in own.model_fields_set})
    if "approval" not in given and profile.approval:
        update["approval"] = list(profile.approval)
    return submission.model_copy(update=update) if update else submission

