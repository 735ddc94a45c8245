"""The vLLM baseline: the models of a zoo served by vLLM behind one OpenAI-compatible endpoint.

    python -m baselines.vllm_server --zoo DIR --models a,b --mode per-model|lora --port P
        [--memory-budget 4GiB] [--kv-budget 512MiB] [--dtype float32] [--device cpu|cuda]

per-model: one vLLM server per model (a LoRA model merged into its base), as a deployer with
N fine-tunes runs them; lora: the LoRA variants of a base in one server with --enable-lora,
the rest one server each. A router forwards each request by its `model` field and starts and
stops servers under the memory budget (baselines/vllm_router.py). The deployment (vLLM version,
every server's flags and core binding) is at GET /deployment; the harness records it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import tempfile
from pathlib import Path

import click
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from baselines.vllm_deploy import Resources, peers_python, plan, slots_for, vllm_version
from baselines.vllm_router import Launch, Router


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {
        "message": message, "type": kind, "param": None, "code": status}})


def create_app(router: Router, deployment: dict) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_):
        await router.start_initial()  # /health answers only once they all do
        yield
        await router.close()

    app = FastAPI(title="vLLM baseline router", lifespan=lifespan)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/deployment")
    async def show():
        return deployment

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "vllm",
                                            "server": b.spec.name, "state": b.state}
                                           for m, b in router.owner.items()]}

    @app.get("/metrics")
    async def metrics():
        c = router.counters
        lines = [
            "# HELP vllm_router_server_starts_total vLLM servers started (cold starts)",
            "# TYPE vllm_router_server_starts_total counter",
            f"vllm_router_server_starts_total {c['starts']}",
            "# HELP vllm_router_start_seconds_total seconds from launch to a server's /health",
            "# TYPE vllm_router_start_seconds_total counter",
            f"vllm_router_start_seconds_total {c['start_seconds']}",
            "# TYPE vllm_router_server_stops_total counter",
            f"vllm_router_server_stops_total {c['stops']}",
            "# TYPE vllm_router_servers_running gauge",
            f"vllm_router_servers_running {len(router._running())}"]
        return PlainTextResponse("\n".join(lines) + "\n")

    async def forward(path: str, request: Request):
        raw = await request.body()
        try:
            model = json.loads(raw)["model"]
        except (ValueError, KeyError, TypeError):
            return _error(400, "the body must be a JSON object with a 'model' field")
        if model not in router.owner:
            return _error(404, f"model {model!r} does not exist; served: "
                               f"{', '.join(router.owner)}", "not_found_error")
        try:
            b = await router.acquire(model)
        except RuntimeError as e:
            return _error(503, str(e)[:2000], "server_error")
        try:
            req = router.client.build_request("POST", b.url + path, content=raw,
                                              headers={"content-type": "application/json"})
            resp = await router.client.send(req, stream=True)
        except BaseException:
            await router.release(b)
            raise

        async def body():
            try:
                async for chunk in resp.aiter_raw():
                    yield chunk
            finally:
                await resp.aclose()
                await router.release(b)
        return StreamingResponse(body(), status_code=resp.status_code,
                                 media_type=resp.headers.get("content-type"))

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await forward("/v1/completions", request)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await forward("/v1/chat/completions", request)

    return app


def build(zoo_dir, models: list[str], mode: str, budget: int, kv_budget: int, dtype: str,
          device: str, log_dir: Path, launch: Launch | None = None,
          python: Path | None = None) -> tuple[Router, dict]:
    """The router over the planned deployment, and its description. `launch`/`python` default
    to vLLM from the peer venv (tests pass another OpenAI server)."""
    from blockllm.variants.build import cache_root
    from blockllm.zoo.store import Zoo
    zoo = Zoo(zoo_dir)
    dtype_bytes = 2 if dtype in ("bfloat16", "float16") else 4
    specs = plan(zoo, models, mode, cache_root() / "exports", dtype_bytes)
    slots = slots_for(specs, budget)
    res = Resources(slots, kv_budget // slots, os.cpu_count() or 1, device, dtype)
    python = python or peers_python()
    launch = launch or (lambda spec, slot, port: (res.argv(spec, port), res.env(slot)))
    deployment = {
        "mode": mode, "vllm": vllm_version(python), "python": str(python),
        "memory_budget": budget, "kv_budget": kv_budget, "slots": slots,
        "on_demand": slots < len(specs), "kv_bytes_per_server": res.kv_bytes,
        "servers": [{"name": s.name, "models": list(s.models), "weight_bytes": s.weight_bytes,
                     "argv": launch(s, i % slots, 0)[0], "env": launch(s, i % slots, 0)[1]}
                    for i, s in enumerate(specs)]}
    return Router(specs, slots, budget, python, launch, log_dir), deployment


@click.command()
@click.option("--zoo", "zoo_dir", default=None)
@click.option("--models", required=True, help="Comma-separated zoo models.")
@click.option("--mode", type=click.Choice(["per-model", "lora"]), default="per-model",
              show_default=True)
@click.option("--memory-budget", default="4GiB", show_default=True,
              help="Weight bytes of all running servers together.")
@click.option("--kv-budget", default="512MiB", show_default=True,
              help="KV bytes, split evenly over the servers that run at once.")
@click.option("--dtype", default="float32", show_default=True,
              type=click.Choice(["float32", "bfloat16", "float16"]))
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def main(zoo_dir, models, mode, memory_budget, kv_budget, dtype, device, host, port):
    import uvicorn

    from blockllm.cli import user_errors
    from blockllm.units import parse_bytes

    @user_errors
    def run():
        names = [m.strip() for m in models.split(",") if m.strip()]
        logs = Path(tempfile.mkdtemp(prefix="vllm-baseline-"))
        router, deployment = build(zoo_dir, names, mode, parse_bytes(memory_budget),
                                   parse_bytes(kv_budget), dtype, device, logs)
        atexit.register(router.kill_all)
        click.echo(f"vLLM baseline ({mode}): {len(router.backends)} servers, {deployment['slots']}"
                   f" at once; server logs in {logs}", err=True)
        uvicorn.run(create_app(router, deployment), host=host, port=port, log_level="warning")
    run()


if __name__ == "__main__":
    main()
