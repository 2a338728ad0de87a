"""Generate from an exported folder with the Python API.

    mxport demo                                   # exports the built-in trained tiny gpt-oss into ~/.cache/mxport/demo
    python examples/generate.py ~/.cache/mxport/demo/chat-tiny/export
"""

import sys
from pathlib import Path

from mxport.errors import MxportError
from mxport.runtime.chat.session import ChatSession, require_chat_format
from mxport.runtime.generation.generate import Generator
from mxport.runtime.chat.harmony import SystemContent


def main(folder: str) -> None:
    gen = Generator.from_folder(folder)  # ONNX Runtime on CPU; Generator.from_folder(folder, provider="cuda")
    print(f"backend: {gen.name}")

    # 1. greedy, streamed: text deltas arrive as tokens are chosen
    for delta in gen.stream("The capital of France is", max_new_tokens=16):
        print(delta.text, end="", flush=True)
    print()

    # 2. a batch of prompts of different lengths, sampled with a seed (same seed -> same text)
    for r in gen.generate(["Hello", "Once upon a time there was"], max_new_tokens=12, temperature=0.8,
                          top_p=0.95, seed=0):
        print(f"{r.finish_reason:>11}: {r.text!r}")

    # 3. one chat turn in the family's format: harmony (gpt-oss: only the final channel is printed as it streams) or
    #    the checkpoint's chat template (Qwen3: only the answer, not the reasoning). A family without a
    #    chat format (GPT-2) stops here: require_chat_format raises MxportError naming the family.
    try:
        require_chat_format(Path(folder))
    except MxportError as exc:
        print(f"no chat: {exc}")
        return
    if gen.config is not None and gen.config.family.chat_format == "template":
        # Qwen3: the checkpoint's own jinja chat template; <think>...</think> is the reasoning (off here)
        from mxport.runtime.chat.template import ChatTemplate, TemplateChatSession

        chat = TemplateChatSession(gen, ChatTemplate.from_folder(folder), thinking=False)
        reply = chat.send("What is 2 + 2?", None, lambda kind, text: print(text, end="") if kind == "content" else None,
                          max_new_tokens=32)
        print(f"\n[reasoning: {len(reply.reasoning)} chars, tool calls: {len(reply.tool_calls)}]")
        return
    chat = ChatSession(gen, SystemContent(reasoning="low"))
    reply = chat.send("What is 2 + 2?", max_new_tokens=32,
                      on_delta=lambda channel, text: print(text, end="") if channel == "final" else None)
    print(f"\n[analysis: {len(reply.analysis)} chars, stop: {reply.stop}]")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "out")
