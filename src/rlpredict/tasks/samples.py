"""Hooks shared by the lm-eval tasks: keep all sampled responses, and read them back."""

from __future__ import annotations


def all_samples(resps, docs):
    """lm-eval filter: keep every sampled response of a problem (its default keeps the first)."""
    return resps


def responses_of(results: list) -> list[str]:
    """The responses to one problem, whether lm-eval passes them as one list or flat."""
    return results[0] if results and isinstance(results[0], list) else results
