"""Tiny Qwen3-MoE configurations for the Qwen3-MoE tests, each stressing one thing transformers and mxport could
disagree on. Checkpoints are written by transformers' save_pretrained (the per-expert layout, as published; and the
fused layout with save_original_format=False); nothing is downloaded."""

from __future__ import annotations

# hidden and both intermediate widths are multiples of 32 (MXFP4 blocks); head_dim 24 != hidden/heads (16)
BASE = dict(vocab_size=211, hidden_size=96, intermediate_size=160, moe_intermediate_size=64, num_hidden_layers=3,
            num_attention_heads=6, num_key_value_heads=2, head_dim=24, rope_theta=1e6, max_position_embeddings=512,
            rms_norm_eps=1e-6, num_experts=7, num_experts_per_tok=3, eos_token_id=3, pad_token_id=0)

CASES: dict[str, dict] = {
    # k=3 of 7 experts renormalised, every layer sparse, untied head
    "norm": dict(BASE, norm_topk_prob=True, tie_word_embeddings=False),
    # the chosen probabilities of the softmax over all 7, unnormalised; tied head
    "no_norm": dict(BASE, norm_topk_prob=False, tie_word_embeddings=True),
    # decoder_sparse_step 2 with mlp_only_layers: layers 0, 1 (mlp only), 2 dense, 3 sparse; bf16 on disk
    "step2_bf16": dict(BASE, num_hidden_layers=4, decoder_sparse_step=2, mlp_only_layers=[1], norm_topk_prob=True,
                       tie_word_embeddings=False, dtype="bfloat16"),
    # every layer slides (window 4, shorter than the prompts); no head_dim key: hidden / heads; k = 1
    "sliding": dict(BASE, head_dim=None, use_sliding_window=True, sliding_window=4, num_experts_per_tok=1,
                    norm_topk_prob=False, tie_word_embeddings=False),
}


def make_transformers_qwen3_moe(path, *, seed: int = 0, dtype: str = "float32", fused_path=None, **config):
    """A random tiny Qwen3MoeForCausalLM saved into `path` (per-expert layout) and, when given, `fused_path` (fused
    layout); returns the float32 eval-mode model that was saved (the oracle). Norms are drawn around 1 and the router
    and experts scaled up (transformers' 0.02 init would make every routing decision a near tie)."""
    import copy

    import torch
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(seed)
    model = Qwen3MoeForCausalLM(Qwen3MoeConfig(**config)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith("mlp.gate.weight"):
                p.mul_(25.0)
            elif ".experts." in name:
                p.mul_(5.0)
            elif "embed_tokens" in name and model.config.tie_word_embeddings:
                p.mul_(20.0)
    saved = model
    if dtype == "bfloat16":  # round the weights (the oracle runs on exactly what is saved), save a bf16 copy; the
        with torch.no_grad():  # oracle keeps its float32 buffers (RoPE inv_freq through bf16 would be off ~1e-3)
            for p in model.parameters():
                p.copy_(p.to(torch.bfloat16).float())
        saved = copy.deepcopy(model).to(torch.bfloat16)
    saved.save_pretrained(path)
    if fused_path is not None:
        saved.save_pretrained(fused_path, save_original_format=False)
    return model


def make(tmp_path_factory, cache: dict, name: str):
    """(per-expert checkpoint path, fused checkpoint path, float32 transformers model) for CASES[name], once per
    session."""
    if name not in cache:
        kwargs = {k: v for k, v in CASES[name].items() if v is not None}
        dtype = kwargs.pop("dtype", "float32")
        path = tmp_path_factory.mktemp(f"qwen3_moe_{name}")
        fused = tmp_path_factory.mktemp(f"qwen3_moe_{name}_fused")
        model = make_transformers_qwen3_moe(path, seed=len(name), dtype=dtype, fused_path=fused, **kwargs)
        cache[name] = (path, fused, model)
    return cache[name]
