from rlpredict.tasks.arithmetic import verify


def all_samples(resps, docs):
    """Keep every sampled response of a problem (lm-eval keeps only the first by default)."""
    return resps


def process_results(doc: dict, results: list) -> dict[str, float]:
    """Greedy: one response; sampled (repeats > 1): the mean over the k responses (avg@k)."""
    responses = results[0] if results and isinstance(results[0], list) else results
    scores = [verify(response, doc["answer"]) for response in responses]
    return {"exact_match": sum(scores) / len(scores)}
