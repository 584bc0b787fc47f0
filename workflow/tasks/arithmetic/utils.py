from rlpredict.tasks.arithmetic import verify
from rlpredict.tasks.samples import all_samples, responses_of

__all__ = ["all_samples", "process_results"]


def process_results(doc: dict, results: list) -> dict[str, float]:
    """Greedy: one response; sampled (repeats > 1): the mean over the k responses (avg@k)."""
    scores = [verify(response, doc["answer"]) for response in responses_of(results)]
    return {"exact_match": sum(scores) / len(scores)}
