from rlpredict.tasks.chat_arithmetic import verify
from rlpredict.tasks.samples import all_samples, responses_of

__all__ = ["all_samples", "process_results"]


def process_results(doc: dict, results: list) -> dict[str, float]:
    """Greedy: one reply; sampled (repeats k > 1): the mean over the k replies (avg@k)."""
    scores = [verify(response, doc["answer"]) for response in responses_of(results)]
    return {"exact_match": sum(scores) / len(scores)}
