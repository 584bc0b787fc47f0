"""Math answer verification: final-answer extraction and equivalence.

One verifier serves verl's training reward and lm-eval's scoring, so the two agree.

Extraction (:func:`extract_answer`) takes, in this order, the content of the last
non-empty ``\\boxed{...}`` (nested braces allowed; ``\\fbox`` too; an empty box such as an
echoed "put the final answer within \\boxed{}" is not an answer), the last ``#### N`` line
(GSM8K style), the last ``Answer: ...`` line (DAPO style) and, only when asked, the last
number in the text.

Formatting (:func:`strip_formatting`, the one place where spellings are unified, used by both
the string and the symbolic comparison): LaTeX spacing (``~``, ``\\ ``, ``\\,``, ``\\;``,
``\\quad`` …), ``{,}`` thousands separators, a leading ``\\$``, a trailing period, and a
trailing unit (``\\text``/``\\mathrm``/``\\mbox``… words with an optional power, degrees
``^\\circ``/``°``/``\\degree``, ``\\%``) are dropped, so ``1.6 \\mathrm{~cm}``,
``1.6\\ \\text{cm}`` and ``1.6`` read the same; the number in front is compared exactly.

Equivalence (:func:`is_equivalent`) accepts equal normalised strings, decides plain numbers
(integers, decimals, fractions, thousands separators, ``4.5e33`` / ``4.5\\times10^{33}``)
exactly, rejects expressions in different free variables (a number has none) and otherwise
asks ``math-verify`` to compare the two parsed expressions, which covers LaTeX forms,
intervals, tuples, sets and symbolic expressions.
"""

from __future__ import annotations

import re
import threading
from fractions import Fraction

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
GSM8K_INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'

_PARSE_CONFIG = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())
_BOX_COMMANDS = ("\\boxed", "\\fbox")


def _matching_brace(text: str, open_at: int) -> int | None:
    """Index of the brace closing the one at ``open_at``, or None if unbalanced."""
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def _boxes(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}`` / ``\\fbox{...}`` (or ``\\boxed x``), last first."""
    found = []
    start = max(text.rfind(cmd) for cmd in _BOX_COMMANDS)
    while start >= 0:
        cmd = next(c for c in _BOX_COMMANDS if text.startswith(c, start))
        i = start + len(cmd)
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            end = _matching_brace(text, i)
            if end is not None:
                found.append(text[i + 1 : end].strip())
        elif i > start + len(cmd):  # "\boxed 5" form: up to a space, "$" or end of line
            m = re.match(r"[^\s$]+", text[i:])
            if m:
                found.append(m.group(0))
        start = max(text.rfind(c, 0, start) for c in _BOX_COMMANDS)
    return found


def last_boxed(text: str) -> str | None:
    """Content of the last non-empty box in text, or None when there is none.

    A box is ``\\boxed{...}`` or ``\\fbox{...}`` (nested braces allowed) or ``\\boxed x``.
    A box holding nothing but spaces or LaTeX spacing (``\\boxed{}``, as in an echoed
    instruction) is a placeholder, not an answer, and is skipped.
    """
    return next((box for box in _boxes(text) if strip_formatting(box)), None)


_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


def extract_answer(response: str, *, final_number_fallback: bool = False) -> str | None:
    """The final answer written in a response, or None when it states none."""
    boxed = last_boxed(response)
    if boxed is not None:
        return boxed
    hashes = re.findall(r"####\s*([^\n]+)", response)
    if hashes:
        return hashes[-1].strip()
    answer_lines = re.findall(r"(?im)^\s*\**answer\**\s*:\s*(.+)$", response)
    if answer_lines:
        return answer_lines[-1].strip().rstrip(".").strip("$ ")
    if final_number_fallback:
        numbers = _NUMBER_RE.findall(response)
        if numbers:
            return numbers[-1]
    return None


def reference_answer(reference: str) -> str:
    """The answer part of a reference: itself, or its boxed / ``####`` answer if it has one."""
    reference = str(reference)
    if any(cmd in reference for cmd in _BOX_COMMANDS) or "####" in reference:
        found = extract_answer(reference)
        if found is not None:
            return found
    return reference.strip()


_TEXT_WRAPPERS = ("text", "textbf", "mathrm", "mathbf", "mbox", "textnormal", "operatorname")
_DROP = ("\\left", "\\right", "\\displaystyle")

# LaTeX spacing: "\\" (a matrix row break) is matched first so that it is kept.
_SPACING = re.compile(r"\\\\|\\[ ,;:>!]|\\q?quad(?![a-zA-Z])|~")
# A unit word in a text wrapper ("\text{ cm}", "\mathrm{~m/s}"), with an optional power.
_UNIT_WORD = (
    r"\\(?:text|textrm|textnormal|mathrm|rm|mbox)\s*\{(?!\s*[ie]\s*\})[^{}]*[a-zA-Z][^{}]*\}"
    r"(?:\s*\^\s*(?:\{[^{}]*\}|-?\d))?"
)
_SPACE_AS = {"\\\\": "\\\\", "\\!": ""}  # a row break stays; "\\!" is a negative space
_TRAILING_UNIT = re.compile(rf"{_UNIT_WORD}(?:\s*(?:/|\\cdot)?\s*{_UNIT_WORD})*\s*$")
_TRAILING_SYMBOL = re.compile(r"(?:\^\s*\{?\s*\\circ\s*\}?|°|\\degree(?![a-zA-Z])|\\%|%)\s*$")
_ENDS_IN_TEXT = re.compile(r"\\(?:text|textrm|textnormal|mathrm|rm|mbox)\s*\{[^{}]*\}\s*$")


def _unwrap(text: str, command: str) -> str:
    """Replace every ``\\command{X}`` by ``X`` (nested braces allowed)."""
    token = f"\\{command}{{"
    while (i := text.find(token)) >= 0:
        end = _matching_brace(text, i + len(token) - 1)
        if end is None:
            break
        text = text[:i] + text[i + len(token) : end] + text[end + 1 :]
    return text


def _strip_units(s: str) -> str:
    """Drop trailing units, degrees and percent signs after a value.

    A unit is only dropped after something (``\\text{Evelyn}`` alone is an answer) that is
    not itself text (``\\text{A} \\text{B}`` keeps both words).
    """
    while True:
        m = _TRAILING_UNIT.search(s) or _TRAILING_SYMBOL.search(s)
        if m is None:
            return s
        head = s[: m.start()].rstrip()
        if not head or _ENDS_IN_TEXT.search(head):
            return s
        s = head


def strip_formatting(answer: str) -> str:
    """The answer without formatting that does not change its value; still parseable LaTeX.

    Drops dollar signs, LaTeX spacing (``~``, ``\\ ``, ``\\,``, ``\\;``, ``\\:``, ``\\!``,
    ``\\quad``), ``{,}`` thousands separators, a trailing period, a leading ``\\$`` and
    trailing units (:func:`_strip_units`); rewrites numpy-style numerics ("-1./3",
    "np.arcsin(x)", "4.5e33"). The one place where spellings are unified: both the string and
    the symbolic comparison read answers through it.
    """
    s = str(answer).strip()
    s = _SPACING.sub(lambda m: _SPACE_AS.get(m.group(0), " "), s).replace("{,}", ",")
    s = s.replace("\\$", "$").replace("$", "").strip().rstrip(".").strip()
    s = _strip_units(s).rstrip(".").strip()
    # Plain-text numerics as written by numpy-minded sources: "-1./3", "np.arcsin(x)".
    s = re.sub(r"(\d)\./", r"\1/", s)
    s = re.sub(r"\bnp\.([a-z]+)", r"\\\1", s)
    s = re.sub(r"(\d)[eE]([-+]?\d+)\b", r"\1\\times10^{\2}", s)
    return s


def normalize_answer(answer: str) -> str:
    """A canonical spelling of an answer string (formatting only, never mathematics)."""
    s = strip_formatting(answer).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    for wrapper in _TEXT_WRAPPERS:
        s = _unwrap(s, wrapper)
    for token in _DROP:
        s = s.replace(token, "")
    s = re.sub(r"\^\{?\\circ\}?", "", s)
    s = s.replace("\\%", "").replace("%", "").replace("\\$", "")
    s = re.sub(r"\s+", "", s).rstrip(".")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    if re.fullmatch(r"-?\d+\.\d*?0+", s):  # 2.50 -> 2.5, 3.0 -> 3
        s = s.rstrip("0").rstrip(".")
    return s


def _as_number(s: str) -> Fraction | None:
    """Exact value of a plain number: 12, -3.5, 1/2, \\frac{1}{2}, 4.5e33, 4.5\\times10^{33}."""
    m = re.fullmatch(r"(-?)\\frac(?:\{(\d+)\}|(\d))(?:\{(\d+)\}|(\d))", s)
    if m:
        num, den = int(m.group(2) or m.group(3)), int(m.group(4) or m.group(5))
        return (-1 if m.group(1) else 1) * Fraction(num, den) if den else None
    m = re.fullmatch(r"(-?\d+(?:\.\d+)?)(?:\\times|\\cdot)10\^\{?(-?\d+)\}?", s)
    if m:
        return Fraction(m.group(1)) * Fraction(10) ** int(m.group(2))
    if re.fullmatch(r"-?\d+(\.\d+)?(/\d+|[eE][-+]?\d+)?", s):
        try:
            return Fraction(s)
        except (ValueError, ZeroDivisionError):
            return None
    return None


def _parse(expr: str, timeout: int | None) -> list:
    return parse("\\boxed{" + expr + "}", _PARSE_CONFIG, parsing_timeout=timeout)


def quick_equivalence(answer: str, reference: str) -> bool | None:
    """Decide equivalence from spelling and plain numbers alone; None when undecided."""
    a, r = normalize_answer(answer), normalize_answer(reference)
    if not a or not r:
        return False
    if a == r:
        return True
    na, nr = _as_number(a), _as_number(r)
    if na is not None and nr is not None:
        return na == nr
    if "=" not in a + r and _variables(a) != _variables(r):
        return False  # expressions in different free variables (a number has none)
    return None


def _variables(s: str) -> set[str]:
    """Letters naming variables in a normalised answer: outside commands, except e and i."""
    return set(re.findall(r"[a-df-hj-zA-Z]", re.sub(r"\\[a-zA-Z]+", "", s)))


def symbolic_equivalence(answer: str, reference: str, timeout: int | None = 5) -> bool:
    """Compare parsed expressions with math-verify (slow: sympy).

    The timeout uses SIGALRM and therefore only works in the main thread; elsewhere pass
    ``timeout=None`` and bound the call from outside (e.g. a worker process).
    """
    gold = _parse(strip_formatting(reference), timeout)
    pred = _parse(strip_formatting(answer), timeout)
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=timeout))


def is_equivalent(answer: str, reference: str) -> bool:
    """Whether an extracted answer means the same as the reference answer."""
    quick = quick_equivalence(answer, reference)
    if quick is not None:
        return quick
    in_main = threading.current_thread() is threading.main_thread()
    return symbolic_equivalence(answer, reference, timeout=5 if in_main else None)


def verify_math(response: str, reference: str, *, final_number_fallback: bool = False) -> float:
    """1.0 when the response's final answer is equivalent to the reference, else 0.0."""
    answer = extract_answer(response, final_number_fallback=final_number_fallback)
    if answer is None:
        return 0.0
    return 1.0 if is_equivalent(answer, reference_answer(reference)) else 0.0
