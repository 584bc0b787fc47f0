"""How a task's prompt becomes the text a model is fed.

A split row holds ``prompt`` (the problem as the user writes it) and ``answer``. A task is a
chat task when its prompts are user messages, rendered with the model's own chat template
(training, evaluation, log-prob probes and logits extrapolation all go through
:func:`render_prompt`, so they feed the model the same text).
"""

from __future__ import annotations

# Task name → whether its prompts are chat messages (False: fed to the model as they are).
CHAT_TASKS: dict[str, bool] = {"arithmetic": False, "chat_arithmetic": True}


def is_chat_task(name: str) -> bool:
    """Whether task ``name``'s prompts are rendered with the chat template; KeyError names it."""
    try:
        return CHAT_TASKS[name]
    except KeyError:
        raise KeyError(f"task {name!r} is unknown; known: {', '.join(CHAT_TASKS)}") from None


def render_prompt(tokenizer, prompt: str, chat: bool) -> str:
    """The exact text fed to the model for one problem.

    ``chat=False``: the prompt itself. ``chat=True``: the prompt as one user message rendered
    with the tokenizer's chat template, ending with the assistant header
    (``add_generation_prompt=True``), as TRL and lm-eval's ``apply_chat_template`` render it.
    ValueError naming the tokenizer when a chat prompt meets a tokenizer without a template.
    """
    if not chat:
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"{getattr(tokenizer, 'name_or_path', 'tokenizer')}: a chat task needs a "
            "tokenizer with a chat template, and this one has none"
        )
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
