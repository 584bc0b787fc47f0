"""rlpredict: predict where RL training of an LLM is going from its early checkpoints."""

__version__ = "0.1.0"
