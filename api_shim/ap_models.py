"""Agent Protocol v1 request and response bodies (``shared/agent-protocol/openapi.yml``), plus the ``created_at`` /
``modified_at`` that AutoGPT's forge adds and its benchmark client reads. Every field is always present in a
response, ``null`` when there is no value."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


class TaskRequestBody(BaseModel):
    # required and non-empty, as in AutoGPT's forge: a task needs something to do
    input: str = Field(min_length=1, description="Input prompt for the task.")
    additional_input: dict[str, Any] | None = Field(
        default=None,
        description='Input parameters for the task. {"mode": "continuous"} runs the task without waiting for '
        "each step to be executed (the default is step by step, each step approved by POST .../steps); "
        '{"profile": "governance"} runs it as that agent profile (its commands, budget and approval classes).',
    )


class StepRequestBody(BaseModel):
    input: str | None = Field(
        default=None, description='Empty or "y" approves the proposed step; any other text is feedback to the agent.'
    )
    additional_input: dict[str, Any] | None = Field(
        default=None,
        description='Input parameters for the step. {"command": name, "arguments": {...}} runs that instead of the '
        "proposed command (either key alone keeps the other as proposed).",
    )


class Artifact(BaseModel):
    artifact_id: str
    agent_created: bool
    file_name: str
    relative_path: str | None
    created_at: datetime
    modified_at: datetime


class Task(BaseModel):
    task_id: str
    input: str | None
    additional_input: dict[str, Any]
    artifacts: list[Artifact]
    created_at: datetime
    modified_at: datetime


class Step(BaseModel):
    task_id: str
    step_id: str
    name: str | None
    status: Literal["created", "running", "completed"]
    input: str | None
    additional_input: dict[str, Any]
    output: str | None
    additional_output: dict[str, Any] | None
    artifacts: list[Artifact]
    is_last: bool
    created_at: datetime
    modified_at: datetime


class Pagination(BaseModel):
    total_items: int
    total_pages: int
    current_page: int
    page_size: int


class TaskListResponse(BaseModel):
    tasks: list[Task]
    pagination: Pagination


class TaskStepsListResponse(BaseModel):
    steps: list[Step]
    pagination: Pagination


class TaskArtifactsListResponse(BaseModel):
    artifacts: list[Artifact]
    pagination: Pagination


class NotFound(BaseModel):
    message: str
