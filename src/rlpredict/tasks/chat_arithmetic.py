"""Small arithmetic questions asked in a chat model's own template, answered in free form.

A problem is a user message such as ``What is 23 + 7?``; the model answers in its own words
and :func:`verify` scores the LAST number of the response against the answer. The one verifier
is the GRPO reward, the SFT control's target check and the lm-eval scorer, so training and
evaluation can never disagree.

Each family enumerates its whole problem space; the splits are disjoint slices of one seeded
shuffle of it, so no problem is in two splits and the same seed gives the same splits.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from decimal import Decimal, InvalidOperation

from rlpredict.tasks.arithmetic import SPLITS

TASK_NAME = "chat_arithmetic"

Problem = tuple[str, int]  # (question, answer)


def _add_2d_1d() -> Iterator[Problem]:
    """A two-digit number plus a one-digit one, in either order: 2 × 90 × 10 = 1800."""
    for a in range(10, 100):
        for b in range(10):
            yield f"What is {a} + {b}?", a + b
            yield f"What is {b} + {a}?", a + b


def _add_three_1d() -> Iterator[Problem]:
    """Three one-digit terms: 10³ = 1000."""
    for a in range(10):
        for b in range(10):
            for c in range(10):
                yield f"What is {a} + {b} + {c}?", a + b + c


def _add_upto_20() -> Iterator[Problem]:
    """a + b with 0 ≤ a, b ≤ 20: 21² = 441."""
    for a in range(21):
        for b in range(21):
            yield f"What is {a} + {b}?", a + b


def _sub_upto_20() -> Iterator[Problem]:
    """a − b with 0 ≤ b ≤ a ≤ 20 (no negative answers): 231."""
    for a in range(21):
        for b in range(a + 1):
            yield f"What is {a} - {b}?", a - b


def _add_1d() -> Iterator[Problem]:
    """One-digit addition, 0–9: 100 problems (too few for three disjoint splits of size)."""
    for a in range(10):
        for b in range(10):
            yield f"What is {a} + {b}?", a + b


def _add_2d() -> Iterator[Problem]:
    """Two two-digit numbers: 90² = 8100 (the base is weak here)."""
    for a in range(10, 100):
        for b in range(10, 100):
            yield f"What is {a} + {b}?", a + b


# Family name → generator of every problem of the family, in a fixed order.
FAMILIES: dict[str, Callable[[], Iterator[Problem]]] = {
    "add_2d_1d": _add_2d_1d,
    "add_three_1d": _add_three_1d,
    "add_upto_20": _add_upto_20,
    "sub_upto_20": _sub_upto_20,
    "add_1d": _add_1d,
    "add_2d": _add_2d,
}
DEFAULT_FAMILY = "add_upto_20"


def family_problems(family: str) -> list[dict[str, str]]:
    """Every problem of ``family`` as split rows ``{"prompt", "answer"}``, in a fixed order.

    ValueError naming the family when it is unknown.
    """
    if family not in FAMILIES:
        raise ValueError(f"task.family: {family!r} is unknown; known: {', '.join(FAMILIES)}")
    return [{"prompt": q, "answer": str(a)} for q, a in FAMILIES[family]()]


def check_split_sizes(sizes: dict[str, int], family: str) -> int:
    """The number of distinct problems of ``family``; ValueError (naming the family, its size
    and the sizes asked) when the three splits together need more."""
    space = len(family_problems(family))
    total = sum(sizes[name] for name in SPLITS)
    if total > space:
        asked = ", ".join(f"{name} {sizes[name]}" for name in SPLITS)
        raise ValueError(
            f"task: family {family!r} has {space} distinct problems; the splits ask "
            f"for {total} ({asked})"
        )
    return space


def generate_splits(
    sizes: dict[str, int], family: str = DEFAULT_FAMILY, seed: int = 0
) -> dict[str, list[dict[str, str]]]:
    """Disjoint train/dev/test splits of ``family``, deterministic from ``seed``.

    ``sizes`` maps each of train, dev, test to a number of problems. ValueError (naming the
    family, its size and the sizes asked) when the family has fewer distinct problems than
    the splits need together.
    """
    check_split_sizes(sizes, family)
    problems = family_problems(family)
    random.Random(seed).shuffle(problems)
    splits, start = {}, 0
    for name in SPLITS:
        splits[name] = problems[start : start + sizes[name]]
        start += sizes[name]
    return splits


# A number: an optional sign (not when it follows a word, a digit or a closing bracket, so
# "3-5" is 3 then 5), digits with optional thousands commas, an optional decimal part. A
# trailing full stop ("… is 8.") is not a decimal part.
NUMBER = re.compile(r"(?:(?<![\w)\]])[-−])?\d+(?:,\d{3})*(?:\.\d+)?")


def last_number(text: str) -> Decimal | None:
    """The value of the last number written in ``text`` (None when there is none).

    ``"3 + 5 = 8."`` → 8; ``"1,000"`` → 1000; ``"8.0"`` → 8.0; ``"-3"``/``"−3"`` → −3.
    """
    found = NUMBER.findall(text)
    if not found:
        return None
    token = found[-1].replace(",", "").replace("−", "-")
    try:
        return Decimal(token)
    except InvalidOperation:  # not reachable with NUMBER; kept as a guard
        return None


def verify(response: str, answer: str) -> float:
    """1.0 when the last number of ``response`` equals ``answer`` numerically, else 0.0.

    The answer is the LAST number, so an echoed question or a worked sum before the result
    does not count (``"3 + 5 = 8"`` answers 8). ``8``, ``8.``, ``8.0`` and ``**8**`` all
    equal 8.
    """
    value = last_number(response)
    if value is None:
        return 0.0
    try:
        return 1.0 if value == Decimal(str(answer).strip().replace(",", "")) else 0.0
    except InvalidOperation:
        raise ValueError(f"answer {answer!r} is not a number") from None
