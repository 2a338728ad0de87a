"""Stop strings over streamed text in linear time: an Aho–Corasick automaton over the request's stop strings.

The text is fed a token's worth at a time. Text that could still become a stop string is held back; the rest is
shown. The held text is exactly the automaton's state (the longest tail of the text that is a prefix of some stop
string), so each character costs O(1) amortized, whatever the stop strings' lengths; building the automaton costs
O(total stop length). (A search for the held tail by trying every prefix of every stop string costs O(L²) per
token: four 300 kB stop strings stalled every other request on the engine thread.)

Used by the Generator (runtime/generation/generate.py) and the server alike. When a feed completes one or more
stop strings, the text is cut where the earliest of them starts, and the rest is dropped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence


class StopMatcher:
    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.pending = ""  # held back: the automaton state's string (a proper prefix of some stop string)
        self._goto: list[dict[str, int]] = [{}]
        self._fail = [0]
        self._depth = [0]
        self._out = [0]  # length of the longest stop string ending at this state (0: none)
        for s in self.stops:
            node = 0
            for ch in s:
                nxt = self._goto[node].get(ch)
                if nxt is None:
                    nxt = len(self._goto)
                    self._goto[node][ch] = nxt
                    self._goto.append({})
                    self._fail.append(0)
                    self._depth.append(self._depth[node] + 1)
                    self._out.append(0)
                node = nxt
            self._out[node] = len(s)
        queue = deque(self._goto[0].values())
        while queue:  # breadth first: a node's failure link is shallower, hence already computed
            node = queue.popleft()
            for ch, child in self._goto[node].items():
                f = self._fail[node]
                while f and ch not in self._goto[f]:
                    f = self._fail[f]
                self._fail[child] = self._goto[f].get(ch, 0)
                if not self._out[child]:
                    self._out[child] = self._out[self._fail[child]]
                queue.append(child)
        self._state = 0

    def feed(self, text: str) -> tuple[str, bool]:
        """-> (text to show now, whether a stop string was completed; text from it on is dropped)."""
        if not self.stops:
            return text, False
        buf = self.pending + text
        goto, fail, out = self._goto, self._fail, self._out
        state, cut = self._state, None
        for i in range(len(self.pending), len(buf)):
            ch = buf[i]
            while state and ch not in goto[state]:
                state = fail[state]
            state = goto[state].get(ch, 0)
            if out[state]:
                start = i + 1 - out[state]  # the longest stop ending here starts earliest
                cut = start if cut is None else min(cut, start)
        if cut is not None:
            self.pending, self._state = "", 0
            return buf[:cut], True
        keep = self._depth[state]
        self._state = state
        self.pending = buf[len(buf) - keep:] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        out, self.pending, self._state = self.pending, "", 0
        return out
