"""An ``LLM`` whose every call is a span (OpenTelemetry GenAI semantic conventions), child of the step's phase.

``traced(llm, model)`` wraps a model when tracing is on and returns it untouched otherwise. One span covers the
whole call, its retries included (``gen_ai.*`` model and token usage; ``error.type`` and an error status when it
fails). The openai client speaks HTTP through ``httpx2``, which the official httpx instrumentation does not see,
so this span is the LLM's trace.
"""

from __future__ import annotations

from opentelemetry.trace import SpanKind

from autogpt_workers import tracing
from autogpt_workers.agent.types import LLM, LLMResponse, Message, ToolSchema


class TracedLLM:
    def __init__(self, inner: LLM, model: str, system: str = "openai") -> None:
        self.inner = inner
        self.model = model
        self.system = system

    def complete(self, messages: list[Message], tools: list[ToolSchema]) -> LLMResponse:
        attributes = {
            "gen_ai.operation.name": "chat",
            "gen_ai.system": self.system,
            "gen_ai.provider.name": self.system,
            "gen_ai.request.model": self.model,
        }
        with tracing.span(f"chat {self.model}", kind=SpanKind.CLIENT, attributes=attributes) as span:
            try:
                response = self.inner.complete(messages, tools)
            except Exception as exc:
                if span is not None:
                    span.set_attribute("error.type", type(exc).__name__)
                raise
            if span is not None:
                span.set_attributes(
                    {
                        "gen_ai.response.model": response.model or self.model,
                        "gen_ai.usage.input_tokens": response.usage.prompt_tokens,
                        "gen_ai.usage.output_tokens": response.usage.completion_tokens,
                    }
                )
            return response


def traced(llm: LLM, model: str) -> LLM:
    """``llm`` with a span per call when tracing is on in this process; ``llm`` itself otherwise."""
    return TracedLLM(llm, model) if tracing.enabled() else llm
