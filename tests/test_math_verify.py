"""The math verifier on the five vendored benchmark sets and on hand-written edge cases."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rlpredict.tasks.math import (
    extract_answer,
    is_equivalent,
    last_boxed,
    normalize_answer,
    reference_answer,
    verify_math,
)

BENCHMARKS = Path(__file__).resolve().parents[1] / "resources" / "benchmarks"
SETS = {"math": 500, "aime24": 30, "aime25": 30, "gsm8k": 1319, "minerva": 272}


def load_answers(name: str) -> list[str]:
    with (BENCHMARKS / f"{name}.jsonl").open() as f:
        return [str(json.loads(line)["answer"]) for line in f if line.strip()]


def _core(answer: str) -> str:
    """Normalised answer without a leading "x=" so that "5" and "x=5" count as the same."""
    return re.sub(r"^[A-Za-z]\w*=", "", normalize_answer(answer))


def other_answer(answers: list[str], i: int) -> str:
    """The next row's answer that differs from row i's in more than spelling."""
    for step in range(1, len(answers)):
        candidate = answers[(i + step) % len(answers)]
        if _core(candidate) != _core(answers[i]):
            return candidate
    raise AssertionError("every answer in the set is the same")


@pytest.mark.parametrize("name", SETS)
def test_every_reference_verifies_and_other_rows_do_not(name):
    answers = load_answers(name)
    assert len(answers) == SETS[name]
    counts = {"self": 0, "in_response": 0, "other_row_rejected": 0}
    failures = []
    for i, ref in enumerate(answers):
        if verify_math(f"\\boxed{{{ref}}}", ref) == 1.0:
            counts["self"] += 1
        else:
            failures.append(("self", ref))
        response = (
            "First, 2 + 3 = 5 and 7 * 6 = 42, so we continue the derivation.\n"
            f"Putting everything together, the answer is $\\boxed{{{ref}}}$."
        )
        if verify_math(response, ref) == 1.0:
            counts["in_response"] += 1
        else:
            failures.append(("in_response", ref))
        wrong = other_answer(answers, i)
        if verify_math(f"So the answer is $\\boxed{{{wrong}}}$.", ref) == 0.0:
            counts["other_row_rejected"] += 1
        else:
            failures.append(("other_row_accepted", ref, wrong))
    print(f"{name}: {len(answers)} rows, accepted/rejected counts {counts}")
    assert not failures, failures[:10]
    assert counts == dict.fromkeys(counts, len(answers))


def test_last_boxed_handles_nesting_and_picks_the_last():
    text = r"first \boxed{1} then \boxed{\frac{a}{b^{2}}} and $\fbox{7}$ finally \boxed{\{1,2\}}"
    assert last_boxed(text) == r"\{1,2\}"
    assert last_boxed(r"\boxed{\frac{1}{2}} end") == r"\frac{1}{2}"
    assert last_boxed(r"so \boxed 5$ done") == "5"
    assert last_boxed(r"unbalanced \boxed{3 and earlier") is None
    assert last_boxed(r"\boxed{2} then unbalanced \boxed{3") == "2"
    assert last_boxed("no box here") is None


def test_extract_answer_formats():
    assert extract_answer("work...\n#### 1,234") == "1,234"
    assert extract_answer("steps\nAnswer: 42") == "42"
    assert extract_answer("the total is 17 apples") is None
    assert extract_answer("the total is 17 apples", final_number_fallback=True) == "17"
    assert extract_answer(r"#### 3 but \boxed{4}") == "4"


def test_equivalent_forms_are_accepted():
    pairs = [
        (r"\frac{1}{2}", "0.5"),
        (r"\dfrac{1}{2}", r"\frac12"),
        ("1,000", "1000"),
        ("2.50", "2.5"),
        (r"10\%", "10"),
        (r"90^\circ", "90"),
        (r"5\text{ cm}", "5"),
        (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})"),
        (r"x^2+7x+10", r"(x+2)(x+5)"),
        (r"\sqrt{12}", r"2\sqrt{3}"),
        ("-1./3", r"-\frac{1}{3}"),
        ("np.arcsin(10/13)", r"\arcsin(10/13)"),
        (r"[-2, 7]", r"[-2,7]"),
        ("4.5e33", r"4.5 \times 10^{33}"),
        (r"7.5\times10^{-10}", "7.5e-10"),
        (r"\exp(-2t)", "e^{-2t}"),
    ]
    for reference, answer in pairs:
        assert is_equivalent(answer, reference), (answer, reference)
        assert verify_math(f"so $\\boxed{{{answer}}}$", reference) == 1.0, (answer, reference)


def test_different_answers_are_rejected():
    pairs = [
        ("18", "19"),
        (r"\frac{1}{2}", r"\frac{1}{3}"),
        (r"(3,\frac{\pi}{2})", r"(3,\frac{\pi}{3})"),
        (r"x^2+7x+10", r"(x+2)(x+6)"),
        ("[-2,7]", "(-2,7)"),
        (r"\text{Evelyn}", r"\text{Bob}"),
        ("4.5e33", "4.6e33"),
        ("x^2+1", "t^2+1"),
        (r"\frac{2 \pi c}{\lambda}", "300"),
    ]
    for reference, answer in pairs:
        assert not is_equivalent(answer, reference), (answer, reference)
    assert verify_math("I could not solve it.", "18") == 0.0
    assert verify_math("", "18") == 0.0


def test_reference_may_carry_its_own_format():
    assert reference_answer("Janet makes 9 * 2 = 18 dollars.\n#### 18") == "18"
    assert reference_answer(r"so \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert verify_math(r"\boxed{18}", "steps...\n#### 18") == 1.0
