"""Prompt, filter and scoring functions of the local-data math tasks."""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from rlpredict.tasks.math import BOXED_INSTRUCTION, verify_math
except ImportError:  # run from a checkout without rlpredict installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "src"))
    from rlpredict.tasks.math import BOXED_INSTRUCTION, verify_math
from rlpredict.tasks.samples import all_samples, responses_of

__all__ = ["all_samples", "doc_to_text", "process_results"]


def doc_to_text(doc: dict) -> str:
    question = doc.get("problem") or doc.get("question")
    return f"{question}\n{BOXED_INSTRUCTION}"


def process_results(doc: dict, results: list) -> dict[str, float]:
    """avg@n (``acc``) and pass@n over the n responses to one problem."""
    scores = [verify_math(response, str(doc["answer"])) for response in responses_of(results)]
    return {"acc": sum(scores) / len(scores), "pass_at_n": max(scores)}
