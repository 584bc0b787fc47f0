from rlpredict.tasks.arithmetic import verify


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """Greedy: one response; sampled (repeats > 1): the mean over responses (avg@k)."""
    scores = [verify(response, doc["answer"]) for response in results]
    return {"exact_match": sum(scores) / len(scores)}
