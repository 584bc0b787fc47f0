"""The generated arithmetic task: ``a+b=`` prompts with one verifiable answer.

One verifier (:func:`verify`) is the reward for training and the scorer for evaluation, so the
two can never disagree.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path

from rlpredict.atomic import atomic_output_file

SPLITS = ("train", "dev", "test")


def make_problem(rng: random.Random, digits: int) -> dict[str, str]:
    low, high = 10 ** (digits - 1), 10**digits - 1
    a, b = rng.randint(low, high), rng.randint(low, high)
    return {"prompt": f"{a}+{b}=", "answer": str(a + b)}


def generate_splits(
    sizes: dict[str, int], digits: int = 3, seed: int = 0
) -> dict[str, list[dict[str, str]]]:
    """Disjoint train/dev/test problem sets, deterministic from the seed."""
    total = sum(sizes.values())
    space = (9 * 10 ** (digits - 1)) ** 2
    if total > space // 2:
        raise ValueError(
            f"asked for {total} distinct {digits}-digit problems; at most {space // 2} fit"
        )
    rng = random.Random(seed)
    seen: set[str] = set()
    problems = []
    while len(problems) < total:
        problem = make_problem(rng, digits)
        if problem["prompt"] not in seen:
            seen.add(problem["prompt"])
            problems.append(problem)
    splits, start = {}, 0
    for name in SPLITS:
        splits[name] = problems[start : start + sizes[name]]
        start += sizes[name]
    return splits


def verify(response: str, answer: str) -> float:
    """1.0 when the response is exactly the answer (surrounding whitespace ignored)."""
    return 1.0 if response.strip() == str(answer).strip() else 0.0


def max_answer_chars(digits: int) -> int:
    return digits + 1


def write_jsonl(rows: Iterable[dict], path: str | Path) -> None:
    with atomic_output_file(path) as tmp, tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def load_split(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split file not found")
    rows = []
    with path.open() as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({err.msg})") from err
            if "prompt" not in row or "answer" not in row:
                raise ValueError(f"{path}:{line_no}: row needs 'prompt' and 'answer'")
            rows.append(row)
    return rows
