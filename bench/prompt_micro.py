"""``python -m bench.prompt_micro``: what a think's pass over its task's history costs the worker's CPU, for a
history of ``--steps`` committed steps whose observations are ``--output-bytes`` long.

The records the think worker keeps (``runner._Records``: how many are kept, then the list of them), the agent's
messages (``agent.context.build_messages``, with the window check) and the request body the LLM adapter sends
(``llm.openai_chat.request_body``), again and again from the same records, as the think worker does at each step of a
task it has seen before. No LLM, no database: a profiling aid for the history's cost, not a figure of ``make bench``.
"""

from __future__ import annotations

import argparse
import time
import uuid

from autogpt_workers.agent.context import build_messages
from autogpt_workers.agent.prompt import load_prompt
from autogpt_workers.agent.types import Budget, Observation, Proposal, Spent, StepRecord, TaskContext
from autogpt_workers.llm.openai_chat import request_body
from autogpt_workers.runner import _Records
from autogpt_workers.store.ledger import HistoryRow


def _row(record: StepRecord) -> HistoryRow:
    o = record.observation
    return HistoryRow(record.index, record.proposal.model_dump(mode="json"), o.output, o.is_error, o.is_last)


def _record(index: int, output_bytes: int) -> StepRecord:
    call_id = f"call_{index}"
    call = {"id": call_id, "type": "function", "function": {"name": "read_file", "arguments": '{"path": "a.txt"}'}}
    return StepRecord(
        index=index,
        proposal=Proposal(
            assistant_message={"role": "assistant", "content": "Reading the next part. " * 8, "tool_calls": [call]},
            tool_call_id=call_id,
            command="read_file",
            arguments={"path": "a.txt"},
        ),
        observation=Observation(output=("lorem ipsum dolor " * (output_bytes // 18 + 1))[:output_bytes]),
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.prompt_micro", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=50, help="committed steps in the history (default 50)")
    p.add_argument("--output-bytes", type=int, default=4000, help="each observation's length (default 4000)")
    p.add_argument("--rounds", type=int, default=200, help="prompts built (default 200)")
    args = p.parse_args(argv)
    prompt = load_prompt()
    task_id = uuid.uuid4()
    kept = _Records()
    kept.of(task_id, 0, [_row(_record(i, args.output_bytes)) for i in range(args.steps)])  # the task's first think
    for _ in range(50):  # other tasks' records beside them, as in a worker
        kept.of(uuid.uuid4(), 0, [_row(_record(i, 200)) for i in range(20)])
    ctx = TaskContext(task_id="t-1", goal="Read it all", step_index=args.steps, spent=Spent(steps=args.steps),
                      budget=Budget(max_steps=10_000))

    def build() -> bytes:
        history = kept.of(task_id, kept.known(task_id, args.steps), [])
        messages = build_messages(ctx, history, prompt, [("read_file", "Read a file.")], (), 120_000)
        return request_body("gpt-4o-mini", messages, [], None)

    build()  # warm-up
    started = time.process_time()
    for _ in range(args.rounds):
        build()
    per_think = (time.process_time() - started) / args.rounds
    print(f"prompt of {args.steps} steps x {args.output_bytes} B: {per_think * 1000:.3f} ms CPU per think "
          f"({args.rounds} rounds)")


if __name__ == "__main__":
    main()
