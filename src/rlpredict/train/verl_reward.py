"""Reward for verl training with verl's custom reward signature.

verl loads this file by path (``reward.custom_reward_function.path``) and calls
:func:`compute_score` for every response. It dispatches on ``data_source``: the generated
arithmetic task uses the same verifier as evaluation, every other source the math verifier.

verl calls reward functions from worker threads, where math-verify's SIGALRM timeout cannot
work, so off the main thread the slow symbolic comparison runs in a worker process with a
time limit.
"""

from __future__ import annotations

import multiprocessing
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

try:
    import rlpredict  # noqa: F401
except ImportError:  # loaded by file path in an environment without rlpredict installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rlpredict.tasks.arithmetic import verify as verify_arithmetic
from rlpredict.tasks.export import ARITHMETIC_SOURCE
from rlpredict.tasks.math import (
    extract_answer,
    quick_equivalence,
    reference_answer,
    symbolic_equivalence,
)

SYMBOLIC_TIMEOUT_S = 30.0
_pool: ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


def _symbolic_pool() -> ProcessPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            context = multiprocessing.get_context("spawn")
            _pool = ProcessPoolExecutor(max_workers=2, mp_context=context)
        return _pool


def _symbolic(answer: str, reference: str) -> bool:
    if threading.current_thread() is threading.main_thread():
        return symbolic_equivalence(answer, reference)
    future = _symbolic_pool().submit(symbolic_equivalence, answer, reference, 5)
    try:
        return future.result(timeout=SYMBOLIC_TIMEOUT_S)
    except FutureTimeout:
        future.cancel()
        return False


def math_score(solution_str: str, ground_truth: str) -> float:
    answer = extract_answer(solution_str)
    if answer is None:
        return 0.0
    reference = reference_answer(ground_truth)
    quick = quick_equivalence(answer, reference)
    if quick is not None:
        return float(quick)
    return 1.0 if _symbolic(answer, reference) else 0.0


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: str,
    extra_info: dict | None = None,
    **kwargs,
) -> float:
    """1.0 for a correct response, else 0.0."""
    if data_source == ARITHMETIC_SOURCE:
        return verify_arithmetic(solution_str, str(ground_truth))
    return math_score(solution_str, str(ground_truth))
