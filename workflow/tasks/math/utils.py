"""Prompt, filter and scoring functions of the local-data math tasks."""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from rlpredict.tasks.math import BOXED_INSTRUCTION, verify_math
except ImportError:  # run from a checkout without rlpredict installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "src"))
    from rlpredict.tasks.math import BOXED_INSTRUCTION, verify_math


def doc_to_text(doc: dict) -> str:
    question = doc.get("problem") or doc.get("question")
    return f"{question}\n{BOXED_INSTRUCTION}"


def all_samples(resps, docs):
    """Keep every sampled response of a document (lm-eval keeps only the first by default)."""
    return resps


def process_results(doc: dict, results: list) -> dict[str, float]:
    """avg@n (``acc``) and pass@n over the n responses to one problem."""
    samples = results[0] if results and isinstance(results[0], list) else results
    scores = [verify_math(response, str(doc["answer"])) for response in samples]
    return {"acc": sum(scores) / len(scores), "pass_at_n": max(scores)}
