"""The verl reward function: dispatch by data_source, and symbolic checks off the main thread."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from rlpredict.train.verl_reward import compute_score

SQRT_HALF = r"\frac{\sqrt{2}}{2}"


def test_arithmetic_uses_the_exact_match_verifier():
    assert compute_score("rlpredict/arithmetic", "579", "579") == 1.0
    assert compute_score("rlpredict/arithmetic", " 579\n", "579") == 1.0
    assert compute_score("rlpredict/arithmetic", "578", "579") == 0.0
    # The arithmetic task takes the response as the answer: no boxed extraction.
    assert compute_score("rlpredict/arithmetic", r"\boxed{579}", "579") == 0.0


def test_math_sources_use_the_math_verifier():
    for source in ("openai/gsm8k", "HuggingFaceH4/MATH-500", "math_dapo", "aime24", "anything"):
        assert compute_score(source, r"so $\boxed{18}$", "18") == 1.0, source
        assert compute_score(source, "steps\n#### 18", "18") == 1.0, source
        assert compute_score(source, "steps\nAnswer: 18", "18") == 1.0, source
        assert compute_score(source, r"so $\boxed{17}$", "18") == 0.0, source
        assert compute_score(source, "no final answer", "18") == 0.0, source
    score = compute_score("math_dapo", r"\boxed{0.5}", r"\frac12", extra_info={"index": 3}, x=1)
    assert score == 1.0 and isinstance(score, float)


def test_symbolic_equivalence_in_main_and_worker_threads():
    right = (f"The value is $\\boxed{{{SQRT_HALF}}}$.", r"\frac{1}{\sqrt{2}}")
    wrong = (f"The value is $\\boxed{{{SQRT_HALF}}}$.", r"\frac{1}{\sqrt{3}}")
    assert compute_score("HuggingFaceH4/MATH-500", *right) == 1.0
    assert compute_score("HuggingFaceH4/MATH-500", *wrong) == 0.0
    # verl calls rewards from a thread pool, where the check runs in a worker process.
    with ThreadPoolExecutor(2) as pool:
        scores = list(pool.map(lambda args: compute_score("minerva_math", *args), [right, wrong]))
    assert scores == [1.0, 0.0]
