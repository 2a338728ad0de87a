"""Command-line options shared by `mxport run` and `mxport chat`: length, sampling, backend and context.

    add_generation_options(parser, max_new_tokens=256)   # the "generation" option group
    config = generation_config(args, stop_strings=..)    # -> GenerationConfig (options checked before a model loads)
"""

from __future__ import annotations

import argparse

from mxport.errors import MxportError
from mxport.runtime.generation.generate import GenerationConfig
from mxport.runtime.generation.sampling import SamplingConfig


def add_generation_options(parser: argparse.ArgumentParser, max_new_tokens: int = 256) -> None:
    """Options shared by `run` and `chat`."""
    g = parser.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help="tokens to generate at most")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0 = all)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1.0 = all)")
    g.add_argument("--seed", type=int, default=None, help="seed of the sampler (same seed, same text)")
    g.add_argument("--provider", default="cpu", help="onnxruntime provider: cpu, cuda, auto or a full name")
    g.add_argument("--backend", default="ort", choices=("ort", "numpy"),
                   help="ort = ONNX Runtime; numpy = onnx.reference over the graph / the NumPy reference model")
    g.add_argument("--max-context", type=int, default=None, help="context limit (default max_position_embeddings)")


def generation_config(args: argparse.Namespace, **extra) -> GenerationConfig:
    if args.max_context is not None and args.max_context < 1:
        raise MxportError(f"--max-context must be >= 1, found {args.max_context}")
    sampling = SamplingConfig(args.temperature, args.top_k, args.top_p, args.seed)
    return GenerationConfig(max_new_tokens=args.max_new_tokens, sampling=sampling, **extra)
