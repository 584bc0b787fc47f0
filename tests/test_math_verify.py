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


# --------------------------------------------------------------------------------------
# Units and other spellings of the same answer (one normalisation: strip_formatting)

# The same unit written the ways models and references write it ({v}: value, {u}: unit word).
UNIT_SPELLINGS = [
    r"{v} \text{{ {u}}}",
    r"{v} \mathrm{{~{u}}}",
    r"{v}\ \text{{{u}}}",
    r"{v}~\text{{{u}}}",
    r"{v}\,\mathrm{{{u}}}",
    r"{v}\;\mbox{{ {u}}}",
    r"{v}\text{{{u}}}",
    r"{v} \textrm{{{u}}}",
]
_OWN_UNIT = re.compile(r"(?P<v>.+?)\s*\\(?:text|mbox)\{\s*(?P<u>[a-z]+)\}(?P<p>\^2)?")


def with_unit(value: str, unit: str, power: str = "") -> list[str]:
    """``value`` followed by ``unit`` (and ``power``) in every spelling, and with a period."""
    spelled = [s.format(v=value, u=unit) + power for s in UNIT_SPELLINGS]
    return [*spelled, spelled[1] + "."]


def _is_text_answer(ref: str) -> bool:
    """Answers that are words (\\text{Evelyn}): a unit after them is not a unit."""
    return ref.startswith("\\text")


@pytest.mark.parametrize("name", SETS)
def test_every_reference_verifies_with_its_unit_in_any_spelling(name):
    """Boxed as-is, and with a unit (its own or an added one) spelled every way: score 1.

    The same value with the unit on the reference side also scores 1, and another row's
    answer with the same unit scores 0 (units are dropped, values still compared)."""
    answers = load_answers(name)
    failures = []
    for i, ref in enumerate(answers):
        if verify_math(f"The answer is $\\boxed{{{ref}}}$.", ref) != 1.0:
            failures.append(("as-is", ref))
        own = _OWN_UNIT.fullmatch(ref)
        if own:
            value, unit, power = own["v"], own["u"], own["p"] or ""
            variants = [value, *with_unit(value, unit, power)]
        elif _is_text_answer(ref):
            continue
        else:
            value, unit, power = ref, "cm", ""
            variants = with_unit(value, unit)
        for answer in variants:
            if verify_math(f"so $\\boxed{{{answer}}}$", ref) != 1.0:
                failures.append(("respelled", ref, answer))
        if verify_math(f"\\boxed{{{value}}}", with_unit(value, unit, power)[1]) != 1.0:
            failures.append(("unit on the reference", ref))
        wrong = other_answer(answers, i)
        if not _is_text_answer(wrong):
            for answer in with_unit(wrong, unit, power)[:3]:
                if verify_math(f"\\boxed{{{answer}}}", ref) != 0.0:
                    failures.append(("wrong value accepted", ref, answer))
    assert not failures, failures[:10]


def test_issue_unit_spellings_of_the_minerva_answer():
    """Reference 1.6 (Minerva writes units as \\mathrm{~m}): every spelling of 1.6 cm is 1."""
    for answer in [
        r"1.6 \text{ cm}",
        r"1.6 \mathrm{~cm}",
        r"1.6\ \text{cm}",
        r"1.6~\text{cm}",
        r"1.6\,\mathrm{cm}",
        r"1.6\text{cm}",
        r"1.6 \mathrm{~cm}.",
    ]:
        assert verify_math(f"\\boxed{{{answer}}}", "1.6") == 1.0, answer
    for wrong in [r"16 \text{cm}", r"16 \mathrm{~cm}", r"0.16~\text{cm}", r"1.7\ \text{cm}"]:
        assert verify_math(f"\\boxed{{{wrong}}}", "1.6") == 0.0, wrong


def test_other_spellings_of_the_same_value_are_accepted():
    pairs = [
        (r"90^\circ", r"90^{\circ}"),
        (r"90^\circ", "90°"),
        (r"90^\circ", r"90\degree"),
        (r"90^\circ", r"90 \text{ degrees}"),
        ("10", r"10 \%"),
        ("1000", r"1{,}000"),
        ("1000", r"1,\!000"),
        (r"\$32,\!348", r"\$32{,}348"),
        (r"\$32,\!348", "32348"),
        (r"\frac{3}{4}", r"\dfrac{3}{4}"),
        ("2.5", "2.5."),
        (r"4.5e33", r"4.5 \times 10^{33}\,\mathrm{erg}\,\mathrm{s}^{-1}"),
        ("3", r"3\quad\mathrm{m/s}"),
        (r"864 \mbox{ inches}^2", r"864\ \text{in}^{2}"),
        (r"\begin{pmatrix} -1/3 \\ 2/3 \end{pmatrix}", r"\begin{pmatrix}-1/3\\2/3\end{pmatrix}"),
    ]
    for reference, answer in pairs:
        assert verify_math(f"so $\\boxed{{{answer}}}$", reference) == 1.0, (answer, reference)


def test_spelling_does_not_change_what_is_compared():
    """No over-normalisation: words stay answers, a matrix keeps its rows, values differ."""
    assert verify_math(r"\boxed{16 \text{cm}}", "1.6") == 0.0
    assert verify_math(r"\boxed{\text{east}}", r"\text{west}") == 0.0
    assert verify_math(r"\boxed{\text{A} \text{ and } \text{B}}", r"\text{A}") == 0.0
    assert verify_math(r"\boxed{91^\circ}", r"90^\circ") == 0.0
    assert verify_math(r"\boxed{1,001}", "1000") == 0.0
    matrix = r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}"
    assert verify_math(r"\boxed{\begin{pmatrix} 12 \end{pmatrix}}", matrix) == 0.0


# --------------------------------------------------------------------------------------
# Extraction: an empty box is a placeholder, not an answer


def test_issue_echoed_instruction_does_not_hide_the_answer():
    response = r"The answer is \boxed{7}. (Remember to put the final answer within \boxed{}.)"
    assert extract_answer(response) == "7"
    assert verify_math(response, "7") == 1.0


def test_last_non_empty_box_is_the_answer():
    assert last_boxed(r"\boxed{\frac{1}{2}} then \boxed{ } and \fbox{}") == r"\frac{1}{2}"
    assert last_boxed(r"\fbox{3} and finally \boxed{\,} \boxed{~}") == "3"
    assert last_boxed(r"\boxed{1} then \boxed{\{2, \{3\}\}} and \boxed{}") == r"\{2, \{3\}\}"
    assert last_boxed(r"put it in \boxed{} please") is None
    assert extract_answer(r"put the answer in \boxed{}: I do not know") is None
    assert verify_math(r"\boxed{}", "0") == 0.0
    assert extract_answer("steps\n#### 12\n(put the final answer within \\boxed{})") == "12"


def test_training_reward_and_evaluation_score_the_issue_cases_alike():
    """verl's reward and the lm-eval math tasks read answers through the same verifier."""
    import importlib.util

    from rlpredict.train.verl_reward import compute_score

    utils_path = BENCHMARKS.parents[1] / "workflow" / "tasks" / "math" / "utils.py"
    spec = importlib.util.spec_from_file_location("math_task_utils", utils_path)
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    cases = [
        (r"so \boxed{1.6 \mathrm{~cm}}", "1.6", 1.0),
        (r"so \boxed{1.6\ \text{cm}}", "1.6", 1.0),
        (r"so \boxed{1.6~\text{cm}}", "1.6", 1.0),
        (r"so \boxed{16 \text{cm}}", "1.6", 0.0),
        (r"The answer is \boxed{7}. (Remember to put the final answer within \boxed{}.)", "7", 1.0),
        (r"Remember to put the final answer within \boxed{}.", "7", 0.0),
    ]
    for response, reference, expected in cases:
        assert compute_score("minerva_math", response, reference) == expected, response
        scored = utils.process_results({"answer": reference}, [[response]])
        assert scored["acc"] == expected, response
