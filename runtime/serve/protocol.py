"""OpenAI's wire format: request validation (typed, with the field named in every error) and response bodies.

Requests are checked by hand rather than by a schema library so that each error is OpenAI's
`{"error": {"message", "type", "param", "code"}}` naming the field, and so that a field this server does not
implement (penalties, logit_bias, best_of, ...) is refused by name instead of ignored.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from mxport.runtime.generation.sampling import MAX_TOP_LOGPROBS, SamplingConfig


class ApiError(Exception):
    """An error answered as OpenAI's error body with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type_ or ("invalid_request_error" if status < 500 else "server_error")
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = "invalid_value") -> ApiError:
    return ApiError(400, message, param, code)


# Fields that are accepted and have no effect on a local model (OpenAI bookkeeping).
IGNORED = {"user", "metadata", "store", "service_tier", "parallel_tool_calls", "prompt_cache_key", "safety_identifier"}
# Fields that are refused unless they carry their neutral value (where the endpoint does not take them): name ->
# neutral check.
NEUTRAL = {
    "top_logprobs": lambda v: v in (None, 0),
    "response_format": lambda v: v is None or (isinstance(v, dict) and v.get("type") == "text"),
    "presence_penalty": lambda v: v in (None, 0, 0.0),
    "frequency_penalty": lambda v: v in (None, 0, 0.0),
    "logit_bias": lambda v: not v,
    "echo": lambda v: v in (None, False),
    "best_of": lambda v: v in (None, 1),
    "suffix": lambda v: v in (None, ""),
    "modalities": lambda v: v in (None, ["text"]),
    "audio": lambda v: v is None,
    "prediction": lambda v: v is None,
    "web_search_options": lambda v: v is None,
    "verbosity": lambda v: v is None,
}
COMMON = {"model", "stream", "stream_options", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "n",
          "logprobs"}
CHAT = COMMON | {"messages", "max_completion_tokens", "tools", "tool_choice", "reasoning_effort", "top_logprobs",
                 "response_format"}
COMPLETION = COMMON | {"prompt", "return_token_ids"}
MAX_N = 8  # choices per request (n)
MAX_N_TOKENS = 32768  # n x max_tokens of one request
RESPONSE_FORMATS = ("text", "json_object", "json_schema")
SCHEMA_NAME_CHARS = 64
MAX_STOPS = 4  # OpenAI's
GREEDY_BELOW = 1e-5  # a temperature this small is greedy (vLLM's _SAMPLING_EPS): dividing by it overflows
INT64 = 2**63


@dataclass
class Request:
    """A validated request of either endpoint."""

    model: str
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    sampling: SamplingConfig = SamplingConfig()
    stop: tuple[str, ...] = ()
    messages: list[dict] = field(default_factory=list)  # chat
    tools: list[dict] = field(default_factory=list)
    tool_choice: Any = None
    reasoning_effort: str | None = None
    prompt: str | list[int] | None = None  # completions
    return_token_ids: bool = False  # completions: each choice also lists its token ids (vLLM's extension)
    n: int = 1  # choices: independent rows of the batch
    logprobs: int | None = None  # None: none; k: each token's logprob and its k most likely alternatives
    response_format: dict | None = None  # chat: {"type": "json_object" | "json_schema", ...} (None: text)


def parse_request(body: Any, chat: bool, max_stop_chars: int = 1024, max_tools: int = 128,
                  max_tools_bytes: int = 256 * 1024) -> Request:
    check_fields(body, CHAT if chat else COMPLETION, IGNORED, NEUTRAL)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("'model' is required (a string: see GET /v1/models)", "model", "missing_required_parameter")
    req = Request(model=model, stream=_bool(body, "stream"))
    opts = body.get("stream_options")
    if opts is not None:
        if not isinstance(opts, dict) or set(opts) - {"include_usage", "include_obfuscation"}:
            raise bad("stream_options: expected {\"include_usage\": bool}", "stream_options")
        req.include_usage = _bool(opts, "include_usage", "stream_options.include_usage")
    key = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    req.max_tokens = _int(body, key, low=1)
    temperature = _number(body, "temperature", 0.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0.0:
        raise bad("top_p must be in (0, 1]", "top_p")
    top_k = _int(body, "top_k", low=0, high=2**31 - 1) or 0  # an extension (vLLM, llama.cpp); 0 = all
    seed = _int(body, "seed", low=0, high=INT64 - 1)
    req.sampling = SamplingConfig(temperature if temperature >= GREEDY_BELOW else 0.0, top_k, top_p, seed)
    req.stop = _stop(body.get("stop"), max_stop_chars)
    req.n = _int(body, "n", low=1, high=MAX_N) or 1
    if chat:
        wanted = _bool(body, "logprobs")
        top = _int(body, "top_logprobs", low=0, high=MAX_TOP_LOGPROBS)
        if top and not wanted:
            raise bad("top_logprobs: needs \"logprobs\": true", "top_logprobs")
        req.logprobs = (top or 0) if wanted else None
        req.response_format = _response_format(body.get("response_format"))
    else:
        req.logprobs = _int(body, "logprobs", low=0, high=MAX_TOP_LOGPROBS)
    if chat:
        req.messages = body.get("messages")
        if not isinstance(req.messages, list) or not req.messages:
            raise bad("'messages' is required: a non-empty list", "messages", "missing_required_parameter")
        tools = body.get("tools")
        if tools is not None and not isinstance(tools, list):
            raise bad("tools: expected a list of {\"type\": \"function\", \"function\": {...}}", "tools")
        if tools is not None and len(tools) > max_tools:
            raise bad(f"tools: {len(tools)} tools; this server takes at most {max_tools} (--max-tools)", "tools")
        if tools and (size := len(json.dumps(tools))) > max_tools_bytes:
            raise bad(f"tools: {size} bytes of JSON; this server takes at most {max_tools_bytes} (--max-tools-kb)",
                      "tools")
        req.tools = tools or []
        req.tool_choice = body.get("tool_choice")
        effort = body.get("reasoning_effort")
        if effort is not None and not isinstance(effort, str):
            raise bad(f"reasoning_effort: expected a string, found {shorten(effort)}", "reasoning_effort")
        req.reasoning_effort = effort
    else:
        req.prompt = _prompt(body.get("prompt"))
        req.return_token_ids = _bool(body, "return_token_ids")
    return req


def check_fields(body: Any, allowed: set[str], ignored: set[str], neutral: dict) -> None:
    """A JSON object whose every field is allowed, ignored or (with a value other than its neutral one) refused by
    name; the first unknown field is the error's param."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object", None, "invalid_json")
    unknown = sorted(k for k in body if k not in allowed and k not in ignored and k not in neutral)
    if unknown:
        names = ", ".join(unknown)
        raise bad(f"unrecognized request argument(s): {names if len(names) <= 200 else names[:197] + '...'}",
                  unknown[0][:80], "unknown_parameter")
    refused = sorted(k for k, ok in neutral.items() if k in body and k not in allowed and not ok(body[k]))
    if refused:
        shown = ", ".join(f"{k}={shorten(body[k])}" for k in refused)
        raise bad(f"not supported by this server: {shown} (leave them out or use their default)", refused[0],
                  "unsupported_parameter")


def _bool(d: dict, key: str, param: str | None = None) -> bool:
    v = d.get(key)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise bad(f"{param or key}: expected true or false, found {shorten(v)}", param or key)
    return v


def _int(d: dict, key: str, low: int | None = None, high: int | None = None) -> int | None:
    v = d.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad(f"{key}: expected an integer, found {shorten(v)}", key)
    if low is not None and v < low:
        raise bad(f"{key}: must be >= {low}, found {shorten(v)}", key)
    if high is not None and v > high:
        raise bad(f"{key}: must be <= {high}, found {shorten(v)}", key)
    return v


def shorten(v: Any) -> str:
    """A value for an error message, cut to 80 characters (a client's value can be megabytes)."""
    text = repr(v) if not isinstance(v, int) or v.bit_length() < 256 else f"an integer of {v.bit_length()} bits"
    return text if len(text) <= 80 else text[:77] + "..."


def _number(d: dict, key: str, default: float, low: float, high: float) -> float:
    v = d.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        raise bad(f"{key}: expected a number, found {shorten(v)}", key)
    if v < low or v > high:
        raise bad(f"{key}: must be in [{low:g}, {high:g}], found {shorten(v)}", key)
    return float(v)


def _stop(v: Any, max_chars: int) -> tuple[str, ...]:
    if v is None:
        return ()
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOPS:
        raise bad(f"stop: expected a non-empty string or a list of up to {MAX_STOPS} of them, found {shorten(v)}",
                  "stop")
    if longest := max((len(s) for s in stops if len(s) > max_chars), default=0):
        raise bad(f"stop: a stop string of {longest} characters; this server takes at most {max_chars} "
                  "(--max-stop-chars)", "stop")
    return tuple(stops)


def _response_format(v: Any) -> dict | None:
    """response_format: {"type": "text"} (None), {"type": "json_object"} or {"type": "json_schema", "json_schema":
    {"name", "schema", "strict", "description"}}; the schema itself is checked when it becomes a grammar."""
    if v is None:
        return None
    if not isinstance(v, dict) or v.get("type") not in RESPONSE_FORMATS:
        raise bad(f"response_format: expected {{\"type\": one of {', '.join(RESPONSE_FORMATS)}}}, found {shorten(v)}",
                  "response_format")
    if v["type"] == "text":
        return None
    if v["type"] == "json_object":
        return {"type": "json_object"}
    spec = v.get("json_schema")
    if not isinstance(spec, dict) or set(spec) - {"name", "schema", "strict", "description"}:
        raise bad("response_format.json_schema: expected {\"name\", \"schema\", \"strict\", \"description\"}, "
                  f"found {shorten(spec)}", "response_format")
    name = spec.get("name")
    if not isinstance(name, str) or not 0 < len(name) <= SCHEMA_NAME_CHARS:
        raise bad(f"response_format.json_schema.name: expected a string of 1 to {SCHEMA_NAME_CHARS} characters, "
                  f"found {shorten(name)}", "response_format")
    if not isinstance(spec.get("schema", {}), dict):
        raise bad(f"response_format.json_schema.schema: expected a JSON schema object, found "
                  f"{shorten(spec.get('schema'))}", "response_format")
    if spec.get("strict") is not None and not isinstance(spec["strict"], bool):
        raise bad(f"response_format.json_schema.strict: expected true or false, found {shorten(spec['strict'])}",
                  "response_format")
    return {"type": "json_schema", "json_schema": spec}


def _prompt(v: Any) -> str | list[int]:
    if isinstance(v, list) and len(v) == 1 and isinstance(v[0], (str, list)):
        v = v[0]  # a batch of one
    if isinstance(v, str) and v:
        return v
    if isinstance(v, list) and v and all(isinstance(t, int) and not isinstance(t, bool) for t in v):
        return v
    if isinstance(v, list) and len(v) > 1:
        raise bad("prompt: a batch of prompts is not supported (send one request per prompt)", "prompt",
                  "unsupported_parameter")
    raise bad("'prompt' is required: a non-empty string or a list of token ids", "prompt",
              "missing_required_parameter")


# ---- responses ------------------------------------------------------------------------------------------------------

def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chunk(rid: str, model: str, created: int, chat: bool, choice: dict | None, usage_: dict | None = None,
          with_usage: bool = False) -> dict[str, Any]:
    """One streamed chunk; choice None means the usage chunk (empty choices)."""
    out: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                           "created": created, "model": model, "choices": [] if choice is None else [choice]}
    if with_usage:
        out["usage"] = usage_
    return out


def chat_message(content: str, reasoning: str, calls: list[dict]) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": content if content or not calls else None}
    if reasoning:
        msg["reasoning"] = msg["reasoning_content"] = reasoning
    if calls:
        msg["tool_calls"] = calls
    return msg


def choice_body(index: int, chat: bool, text: str, reasoning: str, calls: list[dict], finish_reason: str,
                logprobs: dict | None = None) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": index, "finish_reason": finish_reason, "logprobs": logprobs}
    if chat:
        choice["message"] = chat_message(text, reasoning, calls)
    else:
        choice["text"] = text
    return choice


def completion_body(rid: str, model: str, chat: bool, choices: list[dict], usage_: dict) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": model, "choices": choices, "usage": usage_}


LOGPROB_FLOOR = -9999.0  # OpenAI's value for a token the model gives (practically) no probability


def _lp(value: float) -> float:
    return max(value, LOGPROB_FLOOR)


def chat_logprobs(entries: list[tuple]) -> dict[str, Any]:
    """Chat's logprobs: entries (token text, bytes, logprob, [(text, bytes, logprob), ...]) ->
    {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}], "refusal": None}."""
    return {"content": [{"token": t, "logprob": _lp(lp), "bytes": list(b),
                         "top_logprobs": [{"token": tt, "logprob": _lp(tl), "bytes": list(tb)} for tt, tb, tl in top]}
                        for t, b, lp, top in entries], "refusal": None}


def completion_logprobs(entries: list[tuple], offset: int = 0) -> dict[str, Any]:
    """The completions endpoint's (legacy) logprobs: tokens, token_logprobs, top_logprobs ({text: logprob}) and
    text_offset (each token's start in the choice's text, from `offset`)."""
    offsets = []
    for t, *_ in entries:
        offsets.append(offset)
        offset += len(t)
    return {"tokens": [t for t, *_ in entries], "token_logprobs": [_lp(lp) for _, _, lp, _ in entries],
            "top_logprobs": [_top_dict(top) for *_, top in entries], "text_offset": offsets}


def _top_dict(top: list[tuple]) -> dict[str, float]:
    """{text: logprob}; tokens of the same text (byte pieces of one character all read '\ufffd') keep the likeliest."""
    out: dict[str, float] = {}
    for text, _, lp in top:
        out.setdefault(text, _lp(lp))
    return out
