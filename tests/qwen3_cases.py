"""Tiny Qwen3 configurations shared by the Qwen3 tests: each stresses one thing transformers and mxport could
disagree on. Checkpoints are written by transformers' save_pretrained (tests/oracles.py), nothing is downloaded."""

from __future__ import annotations

BASE = dict(vocab_size=211, hidden_size=96, intermediate_size=160, num_hidden_layers=3, num_attention_heads=6,
            num_key_value_heads=2, head_dim=24, rope_theta=1e6, max_position_embeddings=512, rms_norm_eps=1e-6,
            eos_token_id=3, pad_token_id=0)

CASES: dict[str, dict] = {
    # tied head, head_dim != hidden/heads (24 vs 16), GQA 3:1, non-power-of-two widths
    "tied": dict(BASE, tie_word_embeddings=True),
    # untied head, head_dim 20 (not a multiple of 8: GroupQueryAttention refuses it, the layer stays portable)
    "untied_d20": dict(BASE, tie_word_embeddings=False, head_dim=20, num_attention_heads=3, num_key_value_heads=3),
    # sliding layers from max_window_layers on, window 4 (shorter than the prompts), bf16 weights on disk
    "sliding_bf16": dict(BASE, tie_word_embeddings=True, use_sliding_window=True, sliding_window=4,
                         max_window_layers=1, dtype="bfloat16"),
    # linear rope scaling, attention biases
    "linear_bias": dict(BASE, tie_word_embeddings=False, attention_bias=True,
                        rope_scaling={"rope_type": "linear", "factor": 2.5}),
    # head_dim 32 (a multiple of 16): --target cpu folds the rotary into GroupQueryAttention; YaRN tables
    "folded_rotary_yarn": dict(BASE, tie_word_embeddings=True, head_dim=32, rope_theta=None,
                               rope_parameters={"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0,
                                                "original_max_position_embeddings": 128}),
    # YaRN in the transformers 5 spelling (rope_parameters with rope_theta inside)
    "yarn": dict(BASE, tie_word_embeddings=True, rope_theta=None,
                 rope_parameters={"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0,
                                  "original_max_position_embeddings": 128}),
}


def make(tmp_path_factory, cache: dict, name: str):
    """(checkpoint path, float32 transformers model) for CASES[name], built once per session."""
    import oracles

    if name not in cache:
        kwargs = {k: v for k, v in CASES[name].items() if v is not None}
        dtype = kwargs.pop("dtype", "float32")
        path = tmp_path_factory.mktemp(f"qwen3_{name}")
        cache[name] = (path, oracles.make_transformers_qwen3(path, seed=len(name), dtype=dtype, **kwargs))
    return cache[name]
