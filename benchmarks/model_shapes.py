"""Layer shapes shared by the weight benchmarks."""

# Qwen2.5-0.5B's layer shapes with a 32k vocab; the layer count sets the size.
QWEN25_05B = dict(
    hidden_size=896,
    intermediate_size=4864,
    num_attention_heads=14,
    num_key_value_heads=2,
    vocab_size=32768,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
)
