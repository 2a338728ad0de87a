"""`mxport serve --ray` on a real local Ray cluster: two replicas of a tiny export behind the front door, driven by
the official openai client and compared with the single-process server (the same app in one process).

One cluster per module (2 CPUs, no dashboard, a small object store); the deployment is the one the command makes
(runtime/serve/ray_app.py deploy + front_door).
"""

from __future__ import annotations

import concurrent.futures as futures
import json
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("fastapi")
ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from serve_helpers import run_server, wait_ready  # noqa: E402

from mxport.runtime.serve import ray_app  # noqa: E402
from mxport.runtime.serve.app import create_app, load_folder  # noqa: E402
from mxport.runtime.serve.limits import ServeLimits  # noqa: E402

CONTEXT = 400
MODEL = "tiny"
KEY = "sekrit"
LIMITS = ServeLimits(max_body_mb=1)


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    from mxport.commands.demo import demo_config
    from mxport.exporter.export import export
    from mxport.exporter.synth import write_checkpoint

    cfg, tok = demo_config()
    root = tmp_path_factory.mktemp("serve-ray")
    ckpt = write_checkpoint(root / "ckpt", cfg, seed=0)
    tok.save(ckpt / "tokenizer.json")
    return export(ckpt, root / "export", target="cpu", progress=False)


@pytest.fixture(scope="module")
def cluster():
    from ray import serve

    # 3 logical CPUs: the 2 replicas below (1 each) and the one of the command test
    ray.init(num_cpus=3, include_dashboard=False, object_store_memory=100 << 20, log_to_driver=False)
    try:
        yield
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def deployed(cluster, tiny_export):
    spec = ray_app.RaySpec(str(tiny_export), max_batch=8, max_queue=8, model_name=MODEL, max_context=CONTEXT,
                           limits=LIMITS, api_key=KEY, threads=1, replicas=2, app_name="test")
    app, door = ray_app.front_door(LIMITS, KEY, ("localhost", "127.0.0.1"))
    with run_server(app, LIMITS) as base:
        assert httpx.get(f"{base}/health").status_code == 503  # not deployed yet: the app's "loading"
        door.handle = ray_app.deploy(spec)
        wait_ready(base)
        yield base, door


@pytest.fixture(scope="module")
def single(tiny_export):
    app = create_app(lambda: load_folder(tiny_export, max_batch=8, max_queue=8, model_name=MODEL,
                                         max_context=CONTEXT), limits=LIMITS, api_key=KEY,
                     allowed_hosts=("localhost", "127.0.0.1"))
    with run_server(app, LIMITS) as base:
        wait_ready(base)
        yield base


def client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0, timeout=60)


def replicas_running(name: str = "test") -> int:
    from ray import serve

    app = serve.status().applications.get(name)
    return app.deployments["mxport"].replica_states.get("RUNNING", 0) if app else 0


def test_greedy_answers_streams_and_tools_equal_the_single_process_server(deployed, single):
    ours, theirs = client(deployed[0]), client(single)
    prompt = [5, 17, 99, 23, 44, 301, 7, 250, 12, 64, 3, 81]
    a, b = (c.completions.create(model=MODEL, prompt=prompt, max_tokens=20) for c in (ours, theirs))
    assert a.choices[0].text == b.choices[0].text and a.usage == b.usage
    streamed = ["".join(x.choices[0].text for x in c.completions.create(
        model=MODEL, prompt="The capital of France", max_tokens=16, stream=True) if x.choices) for c in (ours, theirs)]
    assert streamed[0] == streamed[1] and streamed[0]
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"}}}}}]
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}]
    a, b = (c.chat.completions.create(model=MODEL, messages=msgs, tools=tools, max_tokens=24, reasoning_effort="low")
            for c in (ours, theirs))
    assert a.usage == b.usage  # the tools were rendered into the same prompt
    assert a.choices[0].message.content == b.choices[0].message.content and a.choices[0].message.content
    assert a.choices[0].message.model_extra.get("reasoning") == b.choices[0].message.model_extra.get("reasoning")
    chunks = [[(x.choices[0].delta.content or "") for x in c.chat.completions.create(
        model=MODEL, messages=msgs, tools=tools, max_tokens=24, stream=True) if x.choices] for c in (ours, theirs)]
    assert "".join(chunks[0]) == "".join(chunks[1])


def raw(base: str, path: str, body, headers: dict | None = None, method: str = "POST") -> tuple[int, dict]:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    h = {"content-type": "application/json", "authorization": f"Bearer {KEY}", **(headers or {})}
    r = httpx.request(method, f"{base}{path}", content=content if method == "POST" else None,
                      headers={k: v for k, v in h.items() if v is not None})
    return r.status_code, r.json()


@pytest.mark.parametrize("path, body, headers, method", [
    ("/v1/completions", b"{not json", None, "POST"),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "temperature": -1}, None, "POST"),
    ("/v1/completions", {"model": MODEL, "prompt": [7] * 450, "max_tokens": 4}, None, "POST"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "best_of": 2,
                              "presence_penalty": 1}, None, "POST"),
    ("/v1/chat/completions", {"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}, None, "POST"),
    ("/v1/completions", {"model": MODEL, "prompt": "x"}, {"authorization": None}, "POST"),
    ("/v1/completions", {"model": MODEL, "prompt": "x"}, {"authorization": "Bearer wrong"}, "POST"),
    ("/v1/completions", {"model": MODEL, "prompt": "x"}, {"content-type": "text/plain"}, "POST"),
    ("/v1/completions", {"model": MODEL, "prompt": "x"}, {"host": "evil.example"}, "POST"),
    ("/v1/completions", {"model": MODEL, "prompt": "x" * (2 << 20)}, None, "POST"),
    ("/v1/nope", {}, None, "POST"),
    ("/v1/completions", None, None, "GET"),
])
def test_errors_are_the_single_process_servers(deployed, single, path, body, headers, method):
    ours, theirs = raw(deployed[0], path, body, headers, method), raw(single, path, body, headers, method)
    assert ours == theirs and 400 <= ours[0] < 500, (ours, theirs)


def test_a_conversation_stays_on_one_replica(deployed):
    seen: dict[int, set[str]] = {}
    for turn in range(3):
        for conv in range(4):
            msgs = [{"role": "user", "content": f"Conversation {conv}: hello"}]
            for t in range(turn):
                msgs += [{"role": "assistant", "content": f"reply {t}"}, {"role": "user", "content": f"more {t}"}]
            r = httpx.post(f"{deployed[0]}/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"},
                           json={"model": MODEL, "messages": msgs, "max_tokens": 4}, timeout=60)
            assert r.status_code == 200, r.text
            seen.setdefault(conv, set()).add(r.headers["x-mxport-replica"])
    assert all(len(ids) == 1 for ids in seen.values()), seen


def test_a_client_that_leaves_frees_its_slot_on_the_replica(deployed):
    def cancelled() -> int:  # /health lands on either replica: the most any of them reports
        return max(raw(deployed[0], "/health", None, method="GET")[1]["finished"].get("cancelled", 0)
                   for _ in range(8))

    before = cancelled()
    with httpx.stream("POST", f"{deployed[0]}/v1/completions", headers={"authorization": f"Bearer {KEY}"},
                      json={"model": MODEL, "prompt": "Hello", "max_tokens": 190, "stream": True}, timeout=30) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
    deadline = time.monotonic() + 30
    while cancelled() <= before:
        assert time.monotonic() < deadline, "the request whose client left was never cancelled"
        time.sleep(0.2)


def load_run(base: str, stop: threading.Event, results: list) -> None:
    """One client: streaming and plain completions one after another until `stop`; each outcome recorded."""
    i = 0
    while not stop.is_set():
        i += 1
        body = {"model": MODEL, "prompt": [5 + i % 50, 17, 99, 23], "max_tokens": 60, "stream": i % 2 == 0}
        t0 = time.monotonic()
        try:
            r = httpx.post(f"{base}/v1/completions", json=body, headers={"authorization": f"Bearer {KEY}"},
                           timeout=60)
            if body["stream"]:
                events = [e[6:] for e in r.text.split("\n\n") if e.startswith("data: ")]
                ok = r.status_code == 200 and events[-1] == "[DONE]" and '"error"' not in events[-2]
                err = None if ok else json.loads(events[-2] if r.status_code == 200 else r.text)["error"]["code"]
            else:
                ok = r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")
                err = None if ok else r.json()["error"]["code"]
            results.append((t0, time.monotonic(), "ok" if ok else err, r.headers.get("x-mxport-replica")))
        except Exception as exc:  # noqa: BLE001 - a hang or a broken answer: what the test counts as lost
            results.append((t0, time.monotonic(), f"lost: {type(exc).__name__}: {exc}", None))


def test_killing_a_replica_under_load_loses_only_its_inflight_requests(deployed, capsys):
    """A long stream runs on replica R under a load of 4 clients; R's process is killed: the stream ends with a
    replica_failed event, the load's requests either complete or fail the same way (those in flight on R: at
    most one per client), none hangs, and Ray brings the deployment back to 2 replicas."""
    base, door = deployed
    results: list = []
    stop = threading.Event()
    threads = [threading.Thread(target=load_run, args=(base, stop, results)) for _ in range(4)]
    for t in threads:
        t.start()
    while len([r for r in results if r[2] == "ok"]) < 8:
        time.sleep(0.05)
    body = {"model": MODEL, "prompt": [9, 8, 7], "max_tokens": CONTEXT - 4, "stream": True}
    with httpx.stream("POST", f"{base}/v1/completions", json=body, headers={"authorization": f"Bearer {KEY}"},
                      timeout=60) as long:
        lines = long.iter_lines()
        assert next(lines).startswith("data: {")
        victim = long.headers["x-mxport-replica"]
        actor = next(a for a in ray.util.list_named_actors(all_namespaces=True) if victim in a["name"])
        killed_at = time.monotonic()
        ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)
        events = [line[6:] for line in lines if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "replica_failed", events[-3:]
    time.sleep(3)
    stop.set()
    for t in threads:
        t.join(90)
    assert not any(t.is_alive() for t in threads), "a client hung"
    outcomes = [r[2] for r in results]
    assert not [o for o in outcomes if o.startswith("lost")], outcomes  # every request ended with an answer
    failed = [r for r in results if r[2] != "ok"]
    assert all(r[2] == "replica_failed" and r[0] < killed_at and r[3] == victim for r in failed), failed
    assert len(failed) <= 4  # at most one in flight per client
    assert [r for r in results if r[0] > killed_at and r[2] == "ok"], "nothing was served after the kill"
    deadline = time.monotonic() + 90
    while replicas_running() < 2:
        assert time.monotonic() < deadline, "Ray did not bring the deployment back to 2 replicas"
        time.sleep(0.5)
    with capsys.disabled():
        print(f"\n[failover] load: {len(results)} requests, {len(failed)} ended replica_failed (in flight on the "
              f"killed replica), {door.retried} re-sent to another replica, 0 hung or lost; the long stream on it "
              f"ended replica_failed; back to 2 replicas in {time.monotonic() - killed_at:.1f} s")
    assert client(base).completions.create(model=MODEL, prompt=[5, 6], max_tokens=3).usage.completion_tokens == 3


def test_the_command_joins_a_cluster_serves_and_leaves_on_sigterm(deployed, tiny_export):
    from ray import serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = ray.get_runtime_context().gcs_address
    proc = subprocess.Popen([sys.executable, "-m", "mxport", "serve", str(tiny_export), "--ray", "--replicas", "1",
                             "--threads-per-replica", "1", "--ray-address", address, "--port", str(port),
                             "--model-name", "cli"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            try:
                if httpx.get(f"{base}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the command's deployment never became healthy"
            time.sleep(0.2)
        r = httpx.post(f"{base}/v1/completions", json={"model": "cli", "prompt": "Hi", "max_tokens": 2})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
        assert "mxport-cli" in serve.status().applications
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
    err = proc.stderr.read().decode()
    assert rc == 128 + signal.SIGTERM and err.strip().splitlines()[-1] == "terminated", err[-3000:]  # as `serve`
    assert "mxport-cli" not in serve.status().applications  # its app deleted, the cluster left running
    assert replicas_running() == 2


def test_the_command_refuses_more_threads_than_cores(deployed, tiny_export, capsys):
    from mxport.cli import main

    assert main(["serve", str(tiny_export), "--ray", "--replicas", "2", "--threads-per-replica", "2",
                 "--port", "0"]) == 2
    assert "oversubscribed" in capsys.readouterr().err


def test_distinct_prompts_spread_over_both_replicas(deployed):
    """Distinct prompts from concurrent clients: both replicas serve (the router is not stuck on one)."""
    def ask(i: int) -> str:
        r = httpx.post(f"{deployed[0]}/v1/completions", headers={"authorization": f"Bearer {KEY}"},
                       json={"model": MODEL, "prompt": [100 + i, 7, 8], "max_tokens": 8}, timeout=60)
        assert r.status_code == 200, r.text
        return r.headers["x-mxport-replica"]

    with futures.ThreadPoolExecutor(8) as pool:
        assert len(set(pool.map(ask, range(32)))) == 2


def test_every_turn_of_a_conversation_has_its_first_turns_routing_text():
    first = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    later = [*first, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "And?"}]
    text = ray_app.routing_text(json.dumps({"model": MODEL, "messages": first}).encode(), LIMITS)
    assert text == ray_app.routing_text(json.dumps({"model": MODEL, "messages": later}).encode(), LIMITS)
    assert "Be brief." in text and "Hi" in text
    yo = [first[0], {"role": "user", "content": "Yo"}]
    other = ray_app.routing_text(json.dumps({"model": MODEL, "messages": yo}).encode(), LIMITS)
    assert other != text
    ids = ray_app.routing_text(json.dumps({"model": MODEL, "prompt": list(range(3000))}).encode(), LIMITS)
    assert len(ids) == ray_app.PREFIX_CHARS
    assert ray_app.routing_text(b"{not json", LIMITS) is None
    assert ray_app.routing_text(json.dumps({"model": MODEL, "prompt": [1, "x"]}).encode(), LIMITS) is None


def test_rendezvous_ranking_moves_only_the_keys_of_a_replica_that_leaves():
    from mxport.runtime.serve.ray_router import rank

    replicas = ["a1", "b2", "c3"]
    keys = [f"conversation {i}" for i in range(300)]
    home = {k: rank(k, replicas)[0] for k in keys}
    assert {home[k] for k in keys} == set(replicas)  # spread over all three
    after = {k: rank(k, ["a1", "c3"])[0] for k in keys}
    assert all(after[k] == home[k] for k in keys if home[k] != "b2")
    assert all(rank(k, replicas) == rank(k, list(reversed(replicas))) for k in keys[:20])  # order-free


def test_deployment_options_carry_replicas_threads_autoscaling_and_the_router():
    from mxport.runtime.serve.ray_router import PrefixAffinityRouter

    fixed = ray_app.deployment_options(ray_app.RaySpec("x", max_batch=4, max_queue=6, threads=2, replicas=3))
    assert fixed["num_replicas"] == 3 and fixed["ray_actor_options"] == {"num_cpus": 2}
    assert fixed["max_ongoing_requests"] == 10 and fixed["max_queued_requests"] == 6
    assert fixed["request_router_config"]["request_router_class"] is PrefixAffinityRouter
    auto = ray_app.deployment_options(ray_app.RaySpec("x", min_replicas=1, max_replicas=4,
                                                      target_ongoing_requests=2, routing="random"))
    assert auto["num_replicas"] == "auto" and "request_router_config" not in auto
    assert auto["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "initial_replicas": 1,
                                          "target_ongoing_requests": 2}


def test_a_responses_follow_up_goes_to_the_replica_that_stored_its_previous_response(deployed):
    """previous_response_id names a response stored in one replica's process: the front door remembers which
    conversation made it, and the router pins the follow-up to that replica (elsewhere it would be a 404)."""
    c = client(deployed[0])
    for conv in range(4):
        first = c.responses.with_raw_response.create(model=MODEL, input=f"Conversation {conv}", max_output_tokens=4)
        second = c.responses.with_raw_response.create(model=MODEL, input="And then?", max_output_tokens=4,
                                                      previous_response_id=first.parse().id)
        assert second.headers["x-mxport-replica"] == first.headers["x-mxport-replica"]
        assert second.parse().usage.input_tokens > first.parse().usage.input_tokens  # the history came along


def test_ray_options_without_ray_are_refused(tiny_export, capsys):
    from mxport.cli import main

    assert main(["serve", str(tiny_export), "--replicas", "2", "--routing", "random", "--port", "0"]) == 2
    assert "--replicas, --routing: only with --ray" in capsys.readouterr().err
