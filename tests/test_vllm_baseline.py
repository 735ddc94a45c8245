"""The vLLM baseline: its deployment plan (pure), its router over real OpenAI servers on
localhost, and, where the peer environment is installed (`make setup-peers`), real vLLM servers
giving the same greedy tokens as blockllm on the same zoo weights.

The router tests run `blockllm serve` processes as the backends (CI has no vLLM): routing by
model, on-demand starts and stops under the memory budget, and errors are the router's own."""

import asyncio
import sys
from pathlib import Path

import httpx
import pytest

from baselines.vllm_deploy import Resources, ServerSpec, plan, slots_for
from baselines.vllm_server import build, create_app
from tests.test_zoo import four_model_zoo


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return four_model_zoo(tmp_path_factory.mktemp("vllm"))


def test_plan_per_model_and_lora_groups(zoo, tmp_path):
    per = plan(zoo, ["base", "ft", "lora", "other"], "per-model", tmp_path)
    assert [s.models for s in per] == [("base",), ("ft",), ("lora",), ("other",)]
    assert all(not s.loras and s.weight_bytes > 0 for s in per)
    grouped = plan(zoo, ["base", "ft", "lora", "other"], "lora", tmp_path)
    assert [s.models for s in grouped] == [("base", "lora"), ("ft",), ("other",)]
    [base] = [s for s in grouped if s.name == "base"]
    assert base.lora_rank == 4 and (base.loras[0][1] / "adapter_config.json").is_file()
    # adapters whose base is not served get a server of their own, named after them
    alone = plan(zoo, ["lora"], "lora", tmp_path)
    assert [s.models for s in alone] == [("lora-base", "lora")]


def test_resources_split_memory_kv_and_cores():
    specs = [ServerSpec(f"m{i}", Path("."), weight_bytes=100, kv_bytes_per_token=1000)
             for i in range(6)]
    assert slots_for(specs, 250) == 2 and slots_for(specs, 10**6) == 6
    with pytest.raises(Exception, match="memory-budget"):
        slots_for(specs, 50)
    two = Resources(slots=2, kv_bytes=1 << 20, cores=2)
    assert two.env(0)["VLLM_CPU_OMP_THREADS_BIND"] == "0-0"
    assert two.env(1)["VLLM_CPU_OMP_THREADS_BIND"] == "1-1"
    one = Resources(slots=1, kv_bytes=1 << 20, cores=2)
    assert one.env(0)["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"
    assert one.env(0)["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    many = Resources(slots=6, kv_bytes=1 << 20, cores=2)
    assert many.env(3) == {**many.env(0)} and many.env(3)["OMP_NUM_THREADS"] == "1"
    assert one.max_model_len(specs[0]) == ((1 << 20) // 1000 // 128 - 1) * 128
    argv = one.argv(ServerSpec("b", Path("/m"), loras=(("x", Path("/a")),), lora_rank=5), 9)
    assert argv[argv.index("--max-lora-rank") + 1] == "8" and "x=/a" in argv


def _blockllm_launch(zoo_root):
    """Backends for the router tests: `blockllm serve` of the spec's models."""
    def launch(spec, slot, port):
        return (["-m", "blockllm.cli", "serve", "--zoo", str(zoo_root), "--models",
                 ",".join(spec.models), "--port", str(port)], {})
    return launch


async def _serve_all(zoo, tmp_path, models, budget_servers, requests):
    from blockllm.zoo.store import Zoo
    specs = plan(Zoo(zoo.root), models, "per-model", tmp_path / "exports")
    budget = sum(sorted(s.weight_bytes for s in specs)[:budget_servers])
    router, dep = build(zoo.root, models, "per-model", budget, 64 << 20, "float32", "cpu",
                        tmp_path, _blockllm_launch(zoo.root), Path(sys.executable))
    app = create_app(router, dep)
    await router.start_initial()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://router",
                                 timeout=300) as client:
        async def one(model, stream):
            body = {"model": model, "prompt": "ab", "max_tokens": 6, "temperature": 0,
                    "stream": stream}
            r = await client.post("/v1/completions", json=body)
            return model, stream, r
        out = await asyncio.gather(*(one(m, s) for m, s in requests))
        bad = [(await client.post("/v1/completions", json={"model": "nope", "prompt": "x"})),
               (await client.post("/v1/completions", content=b"[1, 2]"))]
        metrics = (await client.get("/metrics")).text
    await router.close()
    return router, dep, out, bad, metrics


def test_router_serves_every_model_under_a_budget_of_two_servers(zoo, tmp_path):
    """Four models, room for two servers: every request answered with its model's own tokens
    (as the model served alone), servers started on demand and stopped, never more than two
    running; unknown models and bad bodies get the router's 404/400."""
    from blockllm.zoo.ingest import chain_model
    models = zoo.models()
    requests = [(m, s) for s in (False, True) for m in models]
    router, dep, out, bad, metrics = asyncio.run(
        _serve_all(zoo, tmp_path, models, 2, requests))
    assert dep["slots"] == 2 and dep["on_demand"]
    tok = zoo.tokenizer("base")
    for model, stream, r in out:
        assert r.status_code == 200, r.text
        want = tok.decode(chain_model(zoo, model).generate([tok.encode("ab")], 6)[0])
        if stream:
            import json
            chunks = [json.loads(line[6:]) for line in r.text.splitlines()
                      if line.startswith("data: {")]
            got = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
        else:
            got = r.json()["choices"][0]["text"]
        assert got == want, (model, stream)
    assert router.counters["starts"] >= 4 and router.counters["stops"] >= 2
    assert router.counters["max_running"] <= 2
    assert bad[0].status_code == 404 and "nope" in bad[0].json()["error"]["message"]
    assert bad[1].status_code == 400
    assert "vllm_router_server_starts_total" in metrics


def test_a_server_that_cannot_start_fails_its_requests_by_name(zoo, tmp_path):
    def broken(spec, slot, port):
        return (["-c", "raise SystemExit('ValueError: no such flag --frobnicate')"], {})
    router, dep = build(zoo.root, ["base"], "per-model", 1 << 30, 64 << 20, "float32", "cpu",
                        tmp_path, broken, Path(sys.executable))
    with pytest.raises(RuntimeError, match="base did not start.*frobnicate"):
        asyncio.run(router.start_initial())


@pytest.mark.slow
def test_real_vllm_gives_our_greedy_tokens(tmp_path):
    """With the peer venv: vLLM (per-model and multi-LoRA) on exported zoo weights gives the
    same greedy tokens as blockllm on the zoo (a small model with SmolLM2's tokenizer)."""
    from baselines.vllm_deploy import peers_python
    from blockllm.errors import UserError
    try:
        peers_python()
    except UserError as e:
        pytest.skip(f"the vLLM peer environment is not installed: {e}")
    from blockllm.loaders import load_source
    from blockllm.zoo.ingest import add, add_source, chain_model
    from blockllm.zoo.store import Zoo
    from experiments.server_proc import server_process
    from tests.conftest import tiny_source
    from tests.test_lora import make_adapter_dir
    tok_src = load_source("embedded")
    src = tiny_source(seed=4, vocab_size=tok_src.config.vocab_size, std=0.05,
                      hidden_size=256, intermediate_size=512, max_position_embeddings=1024)
    src.tokenizer_loader = tok_src.tokenizer_loader
    z = Zoo(tmp_path / "zoo")
    add_source(z, src, "small")
    add(z, str(make_adapter_dir(src, tmp_path / "lora", seed=1)), "small-lora", base="small")
    tok = z.tokenizer("small")
    prompts = ["The capital of France is", "def fib(n):"]
    want = {m: [tok.decode(chain_model(z, m).generate([tok.encode(p)], 8, stop_ids=())[0])
                for p in prompts] for m in ("small", "small-lora")}
    for mode in ("lora", "per-model"):
        argv = ["-m", "baselines.vllm_server", "--zoo", str(z.root), "--models",
                "small,small-lora", "--mode", mode, "--memory-budget", "4GiB"]
        with server_process(argv, timeout_s=900) as (url, _):
            for m, texts in want.items():
                for p, text in zip(prompts, texts):
                    r = httpx.post(url + "/v1/completions", timeout=120, json={
                        "model": m, "prompt": p, "max_tokens": 8, "temperature": 0,
                        "ignore_eos": True})
                    assert r.status_code == 200, r.text
                    assert r.json()["choices"][0]["text"] == text, (mode, m, p)
            dep = httpx.get(url + "/deployment").json()
            assert dep["vllm"].startswith("vllm") and len(dep["servers"]) == (
                1 if mode == "lora" else 2)
