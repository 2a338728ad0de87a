"""The prefix cache: the KV of token sequences the engine already computed, found again by longest prefix.

    cache = PrefixCache(max_bytes)
    cache.store(tokens, kv)       # the tokens a row fed and its per-layer cache, [1, kv_heads, n_i, head_dim] each
    hit = cache.lookup(prompt)    # Hit(length m, kv of those m tokens) or None; m <= len(prompt) - 1
    d = cache.shared(prompt)      # how far the prompt follows a stored sequence (valid to reuse or not)

The engine (engine.py) stores every row twice: after its prefill (the prompt) and when it leaves the batch (the
prompt and the tokens it fed: every generated token but the last). A request whose prompt starts with a stored
sequence (a growing conversation, a shared system prompt, a completion continued) is prefilled from that KV:
only prompt[m:] runs through the model, at positions m.. (a chunk after a cache, as every decode step is).

Which prefixes of an entry are valid. Cache slots are absolute (docs/ARCHITECTURE.md "Contracts"): slot j of a
full-attention layer depends on tokens 0..j only, so the first m slots of an entry of k >= m tokens are the KV of
its first m tokens. A sliding layer of a window-cache export (window W) keeps only the last min(k, W-1) slots,
k-W+1..k-1; reusing m tokens needs slots m-W+1..m-1 (what a query at m can still see), which that layer holds
only when m = k, or when it kept every slot (k <= W-1). So an entry whose every layer holds all k slots
(`whole`: no sliding layers, a --full-cache export, or k <= W-1) is reusable at any length, and any other entry
only at its full length; the lookup takes the longest prefix that is valid by this rule (else no reuse). The
rule reads the arrays' lengths, so it needs no knowledge of the model's layers.

Branch points. With window caches, a second user's prompt that shares a long system prompt with the first one
(and then differs) finds no valid prefix: the first user's entries end past the shared part. When a prompt
follows a stored sequence for BRANCH_TOKENS or more beyond its hit (`shared` - hit length), the engine prefills
it in two calls, up to the branch point and then the rest, and stores the KV at the branch point: from the third
user on, prompts with that system prompt hit there. (With whole entries the hit is the branch point already.)

Lookup walks a token trie (one node per token of the stored sequences) along the prompt: O(len(prompt)). Memory
is bounded by bytes, least recently used first out: the arrays' bytes plus NODE_BYTES per token for the trie.
An entry that another covers is not kept twice: storing a whole entry drops the entries that are its prefixes,
and a sequence that a whole entry already covers is not stored. Not thread-safe: the engine thread alone uses it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import numpy as np

NODE_BYTES = 300  # the trie's bookkeeping per stored token (a node object and its dict), counted in the budget
BRANCH_TOKENS = 64  # a branch point this far beyond a prompt's hit is prefilled and stored on its own (above)


@dataclass
class Entry:
    tokens: tuple[int, ...]
    kv: list[np.ndarray]  # per cache array [1, kv_heads, n_i, head_dim], n_i <= len(tokens): the last n_i slots
    nbytes: int
    whole: bool  # every array holds all len(tokens) slots: any prefix is reusable


@dataclass
class Hit:
    length: int  # tokens of the prompt whose KV is reused
    kv: list[np.ndarray]  # per cache array, the KV of those tokens (owned copies the caller may hand to a model)


class _Node:
    __slots__ = ("children", "end", "whole", "refs")

    def __init__(self) -> None:
        self.children: dict[int, _Node] = {}
        self.end: Entry | None = None  # the entry whose tokens end here
        self.whole = 0  # whole entries that end here or below
        self.refs = 0  # entries that end here or below


class PrefixCache:
    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, found {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._root = _Node()
        self._lru: OrderedDict[tuple[int, ...], Entry] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = self.evictions = 0
        self.tokens_reused = 0  # prompt tokens not prefilled thanks to a hit

    def stats(self) -> dict:
        return {"entries": len(self._lru), "bytes": self.bytes, "max_bytes": self.max_bytes, "hits": self.hits,
                "misses": self.misses, "tokens_reused": self.tokens_reused, "evictions": self.evictions}

    # ---- lookup -----------------------------------------------------------------------------------------------
    def lookup(self, prompt: Sequence[int]) -> Hit | None:
        """The longest valid stored prefix of `prompt` shorter than it (one token at least is left to prefill)."""
        node, best = self._root, None
        for depth, token in enumerate(prompt[: len(prompt) - 1], start=1):
            node = node.children.get(int(token))
            if node is None:
                break
            if node.end is not None or node.whole:
                best = (depth, node)
        if best is None:
            self.misses += 1
            return None
        m, node = best
        entry = node.end if node.end is not None else self._whole_below(node)
        self._lru.move_to_end(entry.tokens)
        self.hits += 1
        self.tokens_reused += m
        kv = [np.array(a[:, :, :m]) if a.shape[2] > m else np.array(a) for a in entry.kv]
        return Hit(m, kv)

    def shared(self, prompt: Sequence[int]) -> int:
        """How many leading tokens of `prompt` (at most len - 1) a stored sequence shares, reusable or not."""
        node, depth = self._root, 0
        for token in prompt[: len(prompt) - 1]:
            node = node.children.get(int(token))
            if node is None:
                break
            depth += 1
        return depth

    @staticmethod
    def _whole_below(node: _Node) -> Entry:
        """A whole entry that passes through `node` (node.whole > 0 says one does)."""
        while node.end is None or not node.end.whole:
            node = next(child for child in node.children.values() if child.whole)
        return node.end

    # ---- store ------------------------------------------------------------------------------------------------
    def store(self, tokens: Sequence[int], kv: Sequence[np.ndarray]) -> bool:
        """Keep the KV of `tokens` (copies of each array's last min(n_i, len(tokens)) slots); False when not kept
        (no budget, longer than the budget, or already covered)."""
        tokens = tuple(int(t) for t in tokens)
        k = len(tokens)
        if not k or not self.max_bytes:
            return False
        if tokens in self._lru:
            self._lru.move_to_end(tokens)
            return False
        end = self._find(tokens)
        if end is not None and end.whole:  # a whole entry goes through (or ends at) the end: it covers these
            return False
        arrays = [np.array(a[:, :, max(0, a.shape[2] - k):]) for a in kv]
        whole = all(a.shape[2] == k for a in arrays)
        entry = Entry(tokens, arrays, sum(a.nbytes for a in arrays) + NODE_BYTES * k, whole)
        if entry.nbytes > self.max_bytes:
            return False
        if whole:  # the entries ending on its path are prefixes of it: it covers them
            for covered in self._ends_on_path(tokens):
                self._remove(covered)
        self._insert(entry)
        while self.bytes > self.max_bytes:
            self._remove(next(iter(self._lru.values())))
            self.evictions += 1
        return True

    def _find(self, tokens: tuple[int, ...]) -> _Node | None:
        node = self._root
        for token in tokens:
            node = node.children.get(token)
            if node is None:
                return None
        return node

    def _ends_on_path(self, tokens: tuple[int, ...]) -> list[Entry]:
        found, node = [], self._root
        for token in tokens:
            node = node.children.get(token)
            if node is None:
                break
            if node.end is not None:
                found.append(node.end)
        return found

    def _insert(self, entry: Entry) -> None:
        node = self._root
        for token in entry.tokens:
            node = node.children.setdefault(token, _Node())
            node.refs += 1
            node.whole += entry.whole
        node.end = entry
        self._lru[entry.tokens] = entry
        self.bytes += entry.nbytes

    def _remove(self, entry: Entry) -> None:
        del self._lru[entry.tokens]
        self.bytes -= entry.nbytes
        node = self._root
        for token in entry.tokens:
            child = node.children[token]
            child.refs -= 1
            child.whole -= entry.whole
            if not child.refs:  # nothing ends here or below any more: cut the branch
                del node.children[token]
                return
            node = child
        node.end = None
