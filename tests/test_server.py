"""The OpenAI-compatible server, as a real process on localhost, driven by the openai client."""

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from baselines.hf_reference import hf_greedy, hf_model
from blockllm.zoo.export import export_source
from tests.live_server import live_server
from tests.test_zoo import four_model_zoo

PROMPTS = ["The river", "hello world", "ab", "Once upon"]
N = 16


@pytest.fixture(scope="module")
def served_zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("server")
    zoo = four_model_zoo(root)
    models = zoo.models()
    # the reference: transformers generate() on the weights the zoo stores (peft-merged LoRA)
    expected = {}
    for m in models:
        src = export_source(zoo, m)
        ref, tok = hf_model(src, merge_adapter=True), zoo.tokenizer(m)
        for p in PROMPTS:
            ids = hf_greedy(ref, tok.encode(p), N)
            if 2 in ids:  # the server stops at EOS (id 2) like generate() would
                ids = ids[: ids.index(2)]
            expected[m, p] = tok.decode(ids)
    return root / "zoo", models, expected


@pytest.fixture(scope="module")
def server(served_zoo):
    root, models, expected = served_zoo
    with live_server(root, models) as (url, _):
        yield url, models, expected


def test_openai_client_greedy_equals_transformers_concurrently(server):
    _all_models_at_once_equal_transformers(*server)


@pytest.mark.parametrize("args", [("--backend", "ray", "--devices", "2"),
                                  ("--devices", "3", "--replicas", "2")], ids=["ray", "replicas"])
def test_several_devices_server_equals_transformers(served_zoo, args):
    """`serve --backend ray --devices 2` (two actor processes hold the blocks) and
    `serve --devices 3 --replicas 2` (shared blocks twice, routed per request): same tokens."""
    if "ray" in args:
        pytest.importorskip("ray")
    root, models, expected = served_zoo
    with live_server(root, models, *args) as (url, _):
        _all_models_at_once_equal_transformers(url, models, expected)


def _all_models_at_once_equal_transformers(url, models, expected):
    from openai import OpenAI
    client = OpenAI(base_url=url + "/v1", api_key="unused")
    jobs = [(m, p) for p in PROMPTS for m in models]

    def one(job):
        m, p = job
        r = client.completions.create(model=m, prompt=p, max_tokens=N, temperature=0)
        return r.choices[0].text

    with ThreadPoolExecutor(len(jobs)) as pool:  # all models at once: they batch together
        texts = list(pool.map(one, jobs))
    for job, text in zip(jobs, texts):
        assert text == expected[job], job


def test_streaming_and_chat(server):
    from openai import OpenAI
    url, models, expected = server
    client = OpenAI(base_url=url + "/v1", api_key="unused")
    stream = client.completions.create(model="lora", prompt=PROMPTS[0], max_tokens=N,
                                       temperature=0, stream=True)
    chunks = [c.choices[0].text for c in stream]
    assert len(chunks) > 1 and "".join(chunks) == expected["lora", PROMPTS[0]]
    stream = client.completions.create(model="lora", prompt=PROMPTS[0], max_tokens=N,
                                       temperature=0, stream=True,
                                       stream_options={"include_usage": True})
    *texts, last = list(stream)
    assert last.choices == [] and last.usage.completion_tokens == N and texts
    chat = client.chat.completions.create(model="base", messages=[
        {"role": "user", "content": "hi"}], max_tokens=5, temperature=0)
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens >= 1
    listed = {m.id for m in client.models.list().data}
    assert listed == set(models)


def test_stop_strings_and_sampling_seed(server):
    url, _, expected = server
    full = expected["base", PROMPTS[1]]
    stop = full[3:5]
    body = {"model": "base", "prompt": PROMPTS[1], "max_tokens": N, "temperature": 0,
            "stop": [stop]}
    r = httpx.post(url + "/v1/completions", json=body, timeout=60).json()
    assert r["choices"][0]["text"] == full[: full.find(stop)]
    assert r["choices"][0]["finish_reason"] == "stop"
    sampled = {"model": "ft", "prompt": "x", "max_tokens": 8, "temperature": 1.0, "seed": 7}
    a = httpx.post(url + "/v1/completions", json=sampled, timeout=60).json()
    b = httpx.post(url + "/v1/completions", json=sampled, timeout=60).json()
    assert a["choices"][0]["text"] == b["choices"][0]["text"]


@pytest.mark.parametrize("body,status,word", [
    ({"model": "nope", "prompt": "x"}, 404, "does not exist"),
    ({"model": "base", "prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
    ({"model": "base", "prompt": "x", "max_tokens": 10**9}, 400, "max_tokens"),
    ({"model": "base", "prompt": "x" * 600}, 400, "context length"),
    ({"model": "base", "prompt": ""}, 400, "prompt"),
    ({"model": "base", "prompt": "x", "temperature": -1}, 400, "temperature"),
    ({"model": "base", "prompt": "x", "top_p": 0}, 400, "top_p"),
    ({"model": "base", "prompt": 5}, 400, "prompt"),
    ({"model": "base"}, 400, "prompt"),
    ({"model": "base", "prompt": [1, 99999]}, 400, "token ids"),
    ({"model": "base", "prompt": "x", "n": 100}, 400, "n"),
    ({"model": "base", "prompt": "x", "stop": [""]}, 400, "stop"),
    # never accepted and silently ignored: unknown fields and fields we do not implement yet
    ({"model": "base", "prompt": "x", "frobnicate": 1}, 400, "frobnicate"),
    ({"model": "base", "prompt": "x", "echo": True, "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "base", "prompt": "x", "suffix": "y"}, 400, "suffix"),
    ({"model": "base", "prompt": "x", "response_format": {"type": "json_object"}}, 400,
     "response_format"),
    ({"model": "base", "prompt": "x", "max_tokens": 2, "min_tokens": 3}, 400, "min_tokens"),
])
def test_bad_requests_get_openai_errors_and_the_server_stays_up(server, body, status, word):
    url, _, _ = server
    r = httpx.post(url + "/v1/completions", json=body, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert word in err["message"] and err["code"] == status
    assert httpx.get(url + "/health").status_code == 200


def test_ignore_eos_and_what_benchmark_clients_send(server):
    """vLLM's `ignore_eos` generates exactly max_tokens (equal work in a benchmark); the no-op
    values `vllm bench serve` sends (repetition_penalty 1, logprobs null) are accepted."""
    url, models, _ = server
    for m in models:
        for p in PROMPTS:
            body = {"model": m, "prompt": p, "max_tokens": N, "temperature": 0,
                    "ignore_eos": True, "repetition_penalty": 1.0, "logprobs": None}
            r = httpx.post(url + "/v1/completions", json=body, timeout=60)
            assert r.status_code == 200, r.text
            assert r.json()["usage"]["completion_tokens"] == N, (m, p)


def test_malformed_json_unknown_route_and_metrics(server):
    url, _, _ = server
    r = httpx.post(url + "/v1/completions", content=b"{not json",
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    assert httpx.get(url + "/v1/nothing").status_code == 404
    text = httpx.get(url + "/metrics").text
    for name in ("blockllm_block_queue_depth", "blockllm_kv_pages_used", "blockllm_resident_bytes",
                 "blockllm_request_latency_seconds_bucket", "blockllm_block_batch_tokens"):
        assert name in text, name
    used = [float(line.split()[-1]) for line in text.splitlines()
            if line.startswith("blockllm_kv_pages_used")]
    assert used and sum(used) == 0, "finished requests hold no KV pages"
    json.loads(json.dumps(httpx.get(url + "/v1/models").json()))
