"""Generate from an exported folder with the Python API.

    mxport demo                                   # exports the built-in trained tiny gpt-oss into ~/.cache/mxport/demo
    python examples/generate.py ~/.cache/mxport/demo/chat-tiny/export
"""

import sys

from mxport.errors import MxportError
from mxport.runtime.chat.session import ChatSession, folder_chat_format
from mxport.runtime.generation.generate import Generator


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

    # 3. one chat turn in the family's format, through the same ChatFormat objects `mxport serve` uses: harmony
    #    (gpt-oss) or the checkpoint's chat template (Qwen3). Only the answer is printed as it streams, not the
    #    reasoning (low effort / thinking off). A family without a chat format (GPT-2) stops here.
    try:
        fmt = folder_chat_format(gen, folder)
    except MxportError as exc:
        print(f"no chat: {exc}")
        return
    chat = ChatSession(gen, fmt, reasoning="low" if fmt.name == "harmony" else "off")
    reply = chat.send("What is 2 + 2?", max_new_tokens=32,
                      on_event=lambda ev: print(ev.text, end="") if ev.kind == "content" else None)
    print(f"\n[reasoning: {len(reply.reasoning)} chars, tool calls: {len(reply.tool_calls)}]")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "out")
