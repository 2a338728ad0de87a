"""A jinja sandbox with resource limits, for a checkpoint's chat template (untrusted input like any other file).

    limits = Limits(max_source=256 KiB, max_value=4 Mi, max_steps=2_000_000, timeout_s=10.0)
    template = compile_template(source, limits, where)      # MxportError: too large, does not compile
    text = render_template(template, limits, where, **variables)   # MxportError: a limit, or the template failed

jinja2's ImmutableSandboxedEnvironment blocks escapes (attributes, mutation) but not resources; on top of it:
- the source is refused over `max_source` characters; the optimizer is off, so nothing is evaluated at compile
  time (jinja2 folds constants, e.g. `'a' * 10**7` or `'a'|center(10**9)`, while compiling);
- the operators that can grow a value (`*`, `**`, `+`, `%`) are intercepted (the sandbox's call_binop) and their
  result size is checked *before* it is made: strings, lists and tuples up to `max_value` items, integers up to
  MAX_INT_BITS bits; `range`, `slice` and `batch` are bounded (MAX_RANGE items), `lipsum` is not offered;
- every filter and call is checked the same way (integer arguments, `replace`/`join`/`indent`/`format` results
  estimated first), `tojson` takes an indent up to MAX_INDENT, a namespace attribute holds at most `max_value`;
- `~` (rewritten to _mxport_concat), outputs, and the arguments of string filters and str methods are measured
  as text first (_text_size): a list holding one long string many times is refused before it becomes text;
- every loop iteration, call, attribute lookup and output value is a step: more than `max_steps`, or a render
  longer than `timeout_s`, ends it (a cooperative check in the render's own thread: nothing runs on after the
  error); the output is gathered chunk by chunk and refused past `max_value` characters.
Any error inside the template (jinja's, TypeError, OverflowError, RecursionError, ...) is one MxportError naming
the template file.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mxport.errors import MxportError

MAX_RANGE = 100_000  # items of range() (as jinja's sandbox)
MAX_INT_BITS = 4096  # an integer result of * or ** (10**1000 fits, 10**10**10 does not)
MAX_INDENT = 32  # tojson's indent
# filters that make no text of their value (its size as text is not measured: `messages|length` in a loop over
# messages stays linear)
STRUCTURE_FILTERS = frozenset({"length", "count", "first", "last", "list", "sort", "unique", "reverse", "map",
                               "select", "reject", "selectattr", "rejectattr", "attr", "default", "d", "batch",
                               "slice", "sum", "min", "max", "abs", "int", "float", "round", "groupby", "dictsort",
                               "items", "random", "bool"})
COUNT_FILTERS = frozenset({"slice", "batch"})  # their count argument makes that many lists or items: up to MAX_RANGE


@dataclass(frozen=True)
class Limits:
    max_source: int = 256 * 1024  # characters of template source (real chat templates: 1-20 kB)
    max_value: int = 4 * 2**20  # characters of output (1M tokens and more), items of any string/list made
    max_steps: int = 2_000_000  # loop iterations + calls + lookups + outputs (a 10000-message Qwen3 chat: 130k)
    timeout_s: float = 10.0  # wall time of one render


class LimitError(Exception):
    """A template broke a resource limit (turned into MxportError by render_template)."""


class _Budget:
    """The steps and deadline of the render in progress (one per render; compile-time checks use none)."""

    def __init__(self, limits: Limits) -> None:
        self.limits, self.steps = limits, 0
        self.deadline = time.monotonic() + limits.timeout_s

    def tick(self) -> None:
        self.steps += 1
        if self.steps > self.limits.max_steps:
            raise LimitError(f"more than {self.limits.max_steps} steps (loop iterations, calls, lookups)")
        if time.monotonic() > self.deadline:
            raise LimitError(f"rendering took longer than {self.limits.timeout_s:g} s")


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (str, bytes, list, tuple, dict)) else 0


def _text_size(value: Any, cap: int) -> int:
    """About len(str(value)) (or its JSON), counted only until it passes `cap`: a list may hold one long string
    many times over, which costs nothing until it is turned into text."""
    if isinstance(value, (str, bytes)):
        return len(value)
    if isinstance(value, (list, tuple, dict, set, frozenset)):
        total = 2
        for item in (value.items() if isinstance(value, dict) else value):
            total += 2 + _text_size(item, cap - total)
            if total > cap:
                break
        return total
    if isinstance(value, int):
        return value.bit_length() // 3 + 2
    return 32


def _env(limits: Limits):
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from jinja2.utils import Namespace, pass_context

    cap = limits.max_value

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise LimitError(what)

    def check_int(x: Any, what: str) -> None:
        if isinstance(x, int) and not isinstance(x, bool):
            need(abs(x) <= cap, f"{what}: an integer argument of {x} (more than {cap})")

    def check_result(x: Any, what: str) -> Any:
        need(_size(x) <= cap, f"{what} made a value of {_size(x)} items (more than {cap})")
        if isinstance(x, int) and not isinstance(x, bool):
            need(x.bit_length() <= MAX_INT_BITS, f"{what} made an integer of more than {MAX_INT_BITS} bits")
        return x

    def format_widths(fmt: str) -> int:
        """The widths and precisions a %- or {}-format string asks for (refused when they exceed the cap)."""
        return sum(int(n) for n in re.findall(r"(?<![A-Za-z])(\d+)", fmt) if len(n) < 12) if fmt else 0

    def estimate(name: str, value: Any, args: tuple, kwargs: dict, as_text: bool = True) -> None:
        """Reject calls whose result would be too large before they run (strings' growing operations). With
        `as_text`, the arguments may be turned into text: their size as text is checked too."""
        for k, a in enumerate((value, *args, *kwargs.values())):
            if k:  # an integer argument may be a width or a count; the value itself is only formatted
                check_int(a, name)
            if as_text:
                need(_text_size(a, cap) <= cap, f"{name}: an argument of more than {cap} characters as text")
        if not isinstance(value, str):
            if name == "join" and isinstance(value, (list, tuple)) and args and isinstance(args[0], str):
                need(len(value) * len(args[0]) <= cap, "join: the result is too large")
            return
        if name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
            count = value.count(args[0]) if args[0] else len(value) + 1
            need(len(value) + count * len(args[1]) <= cap, f"replace: the result would exceed {cap} characters")
        elif name == "join" and args and isinstance(args[0], (list, tuple, str)):
            need(len(args[0]) * (len(value) + 1) <= cap, "join: the result would be too large")
        elif name == "indent":
            width = args[0] if args else kwargs.get("width", 4)
            width = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
            need((value.count("\n") + 1) * abs(width) + len(value) <= cap, "indent: the result would be too large")
        elif name == "expandtabs":
            width = args[0] if args and isinstance(args[0], int) else 8
            need((value.count("\t") + 1) * abs(width) + len(value) <= cap, "expandtabs: the result is too large")
        elif name in ("format", "format_map"):
            need(format_widths(value) <= cap, f"{name}: the widths asked for exceed {cap}")

    class BoundedNamespace(Namespace):
        def __setitem__(self, name: str, value: Any) -> None:
            check_result(value, f"namespace attribute {name!r}")
            super().__setitem__(name, value)

    class Env(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "+", "%"})
        renders = threading.local()  # the budget of the render in progress in this thread

        def tick(self) -> None:
            budget = getattr(self.renders, "budget", None)
            if budget is not None:
                budget.tick()

        def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
            self.tick()
            ints = all(isinstance(x, int) and not isinstance(x, bool) for x in (left, right))
            if operator == "*":
                seq, n = (left, right) if isinstance(right, int) else (right, left)
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int):
                    need(len(seq) * max(n, 0) <= cap, f"'*' would make {len(seq) * n} items (more than {cap})")
                elif ints:
                    need(left.bit_length() + right.bit_length() <= MAX_INT_BITS + 1, "'*': the integer is too large")
            elif operator == "**" and ints and right > 0:
                need(right * max(left.bit_length() - 1, 0) <= MAX_INT_BITS, "'**': the integer is too large")
            elif operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
                need(len(left) + len(right) <= cap, f"'+' would make more than {cap} items")
            elif operator == "%" and isinstance(left, str):
                args = right if isinstance(right, tuple) else (right,)
                for a in args:
                    check_int(a, "'%'")
                    need(_text_size(a, cap) <= cap, f"'%': an argument of more than {cap} characters as text")
                need(format_widths(left) <= cap, f"'%': the widths asked for exceed {cap}")
            return check_result(super().call_binop(context, operator, left, right), f"'{operator}'")

        def getattr(self, obj: Any, attribute: str) -> Any:
            self.tick()
            return super().getattr(obj, attribute)

        def getitem(self, obj: Any, argument: Any) -> Any:
            self.tick()
            return super().getitem(obj, argument)

        def call(__self, __context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
            __self.tick()
            name = getattr(__obj, "__name__", "")
            bound = getattr(__obj, "__self__", None)  # 'text'.replace; the sandbox wraps 'text'.format
            bound = bound if bound is not None else getattr(getattr(__obj, "__wrapped__", None), "__self__", None)
            estimate(name, bound, args, kwargs, isinstance(bound, str))  # macros etc. make no text of their own
            return check_result(super().call(__context, __obj, *args, **kwargs), f"{name or 'a call'}()")

    env = Env(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols], optimized=False)

    def wrap_filter(name: str, fn):
        def bounded(*args: Any, **kwargs: Any) -> Any:
            env.tick()
            value, rest = (args[0], args[1:]) if args else (None, ())
            if isinstance(value, (jinja2.runtime.Context, jinja2.nodes.EvalContext, jinja2.Environment)):
                value, rest = (rest[0], rest[1:]) if rest else (None, ())
            if name == "join" and value is not None and not isinstance(value, (str, list, tuple)):
                value = list(itertools.islice(value, cap + 1))  # join makes a list anyway: count its items
                need(len(value) <= cap, f"join: more than {cap} items")
                args = (*args[: len(args) - len(rest) - 1], value, *rest)
            if name in COUNT_FILTERS and rest:  # slice(n) / batch(n, fill): n lists or fill items
                need(isinstance(rest[0], int) and abs(rest[0]) <= MAX_RANGE, f"{name}: more than {MAX_RANGE}")
            estimate(name, value, rest, kwargs, name not in STRUCTURE_FILTERS)
            return check_result(fn(*args, **kwargs), f"filter {name!r}")

        for attr in ("jinja_pass_arg",):  # keep pass_context / pass_environment markers
            if hasattr(fn, attr):
                setattr(bounded, attr, getattr(fn, attr))
        return bounded

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        if indent is not None:
            need(isinstance(indent, int) and 0 <= indent <= MAX_INDENT or isinstance(indent, str)
                 and len(indent) <= MAX_INDENT, f"tojson: indent {indent!r} (at most {MAX_INDENT})")
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def raise_exception(message: str):
        raise jinja2.exceptions.TemplateError(message)

    def bounded_range(*args: int) -> range:
        for a in args:
            check_int(a, "range")
        r = range(*args)
        need(len(r) <= MAX_RANGE, f"range of {len(r)} items (at most {MAX_RANGE})")
        return r

    def loop_steps(iterable: Any):
        """Every loop's iterable: each iteration is a step (the tree rewrite in compile_template puts it there)."""
        for item in iterable:
            env.tick()
            yield item

    @pass_context
    def finalize(context, value: Any) -> Any:
        env.tick()  # a pass_context finalize also keeps jinja from evaluating outputs at compile time
        need(_text_size(value, cap) <= cap, f"an output value of more than {cap} characters")
        return value

    def concat(items: list) -> str:
        """`a ~ b ~ ...` (the tree rewrite in compile_template puts it there), its size checked first."""
        env.tick()
        need(sum(_text_size(x, cap) for x in items) <= cap, f"'~' would make more than {cap} characters")
        return "".join(map(str, items))

    env.filters["tojson"] = tojson
    env.filters = {name: wrap_filter(name, fn) for name, fn in env.filters.items()}
    env.filters["_mxport_loop"] = loop_steps
    env.filters["_mxport_concat"] = concat
    env.finalize = finalize
    env.globals.pop("lipsum", None)  # lipsum(n=10**6) would run for minutes inside one call; no template uses it
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt),
                       range=bounded_range, namespace=BoundedNamespace)
    return env


def _guard():
    from jinja2 import nodes
    from jinja2.visitor import NodeTransformer

    class Guard(NodeTransformer):
        """Every for-loop's iterable goes through _mxport_loop (a step per iteration), every `~` through
        _mxport_concat (its size checked): jinja compiles both to plain Python that no sandbox hook sees."""

        def visit_For(self, node):
            node = self.generic_visit(node)
            node.iter = nodes.Filter(node.iter, "_mxport_loop", [], [], None, None, lineno=node.lineno)
            return node

        def visit_Concat(self, node):
            node = self.generic_visit(node)
            items = nodes.List(node.nodes, lineno=node.lineno)
            return nodes.Filter(items, "_mxport_concat", [], [], None, None, lineno=node.lineno)

    return Guard()


def compile_template(source: str, limits: Limits, where: str):
    """The jinja Template of `source`, every for-loop counted, or MxportError naming `where`."""
    import jinja2

    if len(source) > limits.max_source:
        raise MxportError(f"{where}: chat_template is {len(source)} characters, more than the limit of "
                          f"{limits.max_source}")
    env = _env(limits)
    try:
        tree = _guard().visit(env.parse(source))
        return env.template_class.from_code(env, env.compile(tree, filename=where), env.make_globals(None))
    except jinja2.TemplateError as exc:
        raise MxportError(f"{where}: chat_template does not compile ({exc})") from None
    except (RecursionError, MemoryError, SyntaxError, ValueError, OverflowError) as exc:
        raise MxportError(f"{where}: chat_template does not compile ({type(exc).__name__}: {exc})") from None


def render_template(template, limits: Limits, where: str, **variables: Any) -> str:
    """The template's text for `variables`, within `limits`; MxportError naming `where` on any failure."""
    renders = template.environment.renders
    renders.budget = budget = _Budget(limits)
    chunks, total = [], 0
    try:
        for chunk in template.generate(**variables):
            total += len(chunk)
            if total > limits.max_value:
                raise LimitError(f"the output exceeds {limits.max_value} characters")
            chunks.append(chunk)
            budget.tick()
    except LimitError as exc:
        raise MxportError(f"{where}: chat template stopped: {exc} (a limit on templates, docs/GENERATION.md)") \
            from None
    except Exception as exc:  # anything the template does wrong (TypeError, OverflowError, ...) is its error
        raise MxportError(f"{where}: chat template failed: {type(exc).__name__}: {exc}") from None
    finally:
        renders.budget = None
    return "".join(chunks)
