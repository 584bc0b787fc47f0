"""Each task's one verifier and reply length, by task name (torch-free: verl's reward
workers import it)."""

from __future__ import annotations

from collections.abc import Callable

from rlpredict.tasks import arithmetic, chat_arithmetic
from rlpredict.tasks.prompts import is_chat_task

VERIFIERS: dict[str, Callable[[str, str], float]] = {
    "arithmetic": arithmetic.verify,
    chat_arithmetic.TASK_NAME: chat_arithmetic.verify,
}


def verifier(task: str) -> Callable[[str, str], float]:
    """``verify(response, answer) -> 1.0 | 0.0`` of task ``task``; KeyError naming it."""
    try:
        return VERIFIERS[task]
    except KeyError:
        raise KeyError(f"task {task!r} has no verifier; known: {', '.join(VERIFIERS)}") from None


def eval_max_tokens(task: dict) -> int:
    """Most tokens of one response at evaluation for the config's ``task`` section: a chat
    task's ``max_new_tokens``; arithmetic, the answer's digits plus room for EOS."""
    if is_chat_task(task["name"]):
        return int(task["max_new_tokens"])
    return int(task["digits"]) + 3
