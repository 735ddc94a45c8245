"""Soak test: a server on localhost under mixed valid and invalid requests with random client
disconnects, bounded in time and count; reports what happened to every request and whether
memory or KV pages grew.

    python -m experiments.soak --zoo DIR --models a,b [--duration 600] [--out results/soak.json]

Every request ends in exactly one bucket: answered (2xx, complete), rejected (4xx, with the
error message's first words as the reason), failed (5xx, with reason), disconnected (we closed
it on purpose mid-stream), or lost (a transport error, or no answer within --client-timeout:
hung). lost must be 0.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from pathlib import Path

import click
import httpx
from tqdm import tqdm

from experiments.harness import process_rss
from experiments.server_proc import metric, server_process

BAD_BODIES = [
    b"{not json", b'{"model": "M", "prompt": "\xff\xfe"}', b"[]", b'{"model": "M"}',
    b'{"model": "nope", "prompt": "x"}', b'{"model": "M", "prompt": "x", "max_tokens": -1}',
    b'{"model": "M", "prompt": "x", "temperature": -2}', b'{"model": "M", "prompt": ""}',
    b'{"model": "M", "prompt": "x", "n": 500}', b'{"model": "../../etc/passwd", "prompt": "x"}',
    b'{"model": "M", "prompt": "x", "stop": ' + json.dumps(["s"] * 64).encode() + b"}",
    b'{"model": "M", "prompt": "x", "logprobs": 50}', b'{"model": "M", "prompt": ["x", ""]}',
    b'{"model": "M", "prompt": "x", "echo": true, "max_tokens": 0}',
    b'{"model": "M", "prompt": "x", "logit_bias": {"x": 1}}',
    b'{"model": "M", "prompt": "x", "logit_bias": {"999999": 1}}',
    b'{"model": "M", "prompt": "x", "presence_penalty": 9}',
    b'{"model": "M", "prompt": "x", "stop_token_ids": [-1]}',
    b'{"model": "M", "prompt": "x", "n": 3, "best_of": 2}',
]
# valid requests carry one of these now and then (more choices, logprobs, penalties)
EXTRAS = [{}, {}, {}, {"n": 2}, {"logprobs": 2}, {"prompt": ["Hi", "Bye"]},
          {"presence_penalty": 0.5, "frequency_penalty": 0.5}, {"logit_bias": {"50": 5}}]


async def _one(client: httpx.AsyncClient, url: str, models: list[str], rng: random.Random,
               tally: Counter, reasons: Counter, timeout: float) -> None:
    kind = rng.choices(["valid", "stream", "chat", "disconnect", "invalid", "huge"],
                       [30, 20, 10, 15, 20, 5])[0]
    model = rng.choice(models)
    body = {"model": model, "prompt": rng.choice(["Hello", "The river", "2+2=", "Write"]),
            "max_tokens": rng.randint(1, 24), "temperature": rng.choice([0, 0.7]),
            **rng.choice(EXTRAS)}
    tally["sent"] += 1
    try:
        async with asyncio.timeout(timeout):
            if kind == "invalid" or kind == "huge":
                content = rng.choice(BAD_BODIES).replace(b'"M"', json.dumps(model).encode()) \
                    if kind == "invalid" else b'{"prompt": "' + b"x" * (2 << 20) + b'"}'
                r = await client.post(url + "/v1/completions", content=content,
                                      headers={"content-type": "application/json"})
                _classify(r.status_code, r.text, tally, reasons)
            elif kind in ("stream", "disconnect"):
                async with client.stream("POST", url + "/v1/completions",
                                         json={**body, "stream": True}) as r:
                    if r.status_code != 200:
                        return _classify(r.status_code, (await r.aread()).decode(), tally,
                                         reasons)
                    cut = rng.randint(1, 3) if kind == "disconnect" else None
                    n, err = 0, None
                    async for line in r.aiter_lines():
                        if line.startswith("data: {") and '"error"' in line:
                            err = json.loads(line[6:])["error"]["message"]
                        n += line.startswith("data: ")
                        if cut is not None and n >= cut:
                            tally["disconnected"] += 1
                            return
                    _classify(500 if err else 200, err or "", tally, reasons)
            else:
                path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
                if kind == "chat":
                    body = {k: v for k, v in body.items() if k not in ("prompt", "logprobs")}
                    body["messages"] = [{"role": "user", "content": "Say hi"}]
                r = await client.post(url + path, json=body)
                _classify(r.status_code, r.text, tally, reasons)
    except TimeoutError:
        tally["lost"] += 1
        reasons["lost: hung past the client timeout"] += 1
    except httpx.HTTPError as e:
        tally["lost"] += 1
        reasons[f"lost: {type(e).__name__}"] += 1


def _classify(status: int, text: str, tally: Counter, reasons: Counter) -> None:
    if 200 <= status < 300:
        tally["answered"] += 1
        return
    try:
        text = json.loads(text)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        pass
    bucket = "rejected" if status < 500 else "failed"
    tally[bucket] += 1
    reasons[f"{status}: {' '.join(str(text).split()[:5])[:60]}"] += 1


async def soak(url: str, models: list[str], duration_s: float, max_requests: int,
               concurrency: int, seed: int, client_timeout: float) -> tuple[Counter, Counter]:
    rng, tally, reasons = random.Random(seed), Counter(), Counter()
    end = time.monotonic() + duration_s
    limits = httpx.Limits(max_connections=concurrency + 4)
    bar = tqdm(total=int(duration_s), desc="soak", unit="s")
    async with httpx.AsyncClient(timeout=client_timeout + 5, limits=limits) as client:
        async def worker():
            while time.monotonic() < end and tally["sent"] < max_requests:
                await _one(client, url, models, rng, tally, reasons, client_timeout)
                done = int(duration_s - max(0.0, end - time.monotonic()))
                if done > bar.n:
                    bar.update(done - bar.n)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    bar.close()
    return tally, reasons


@click.command()
@click.option("--zoo", "zoo_dir", default=None)
@click.option("--models", required=True)
@click.option("--duration", default=600.0, show_default=True, help="Seconds of load.")
@click.option("--max-requests", default=100_000, show_default=True)
@click.option("--concurrency", default=8, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--client-timeout", default=120.0, show_default=True,
              help="A request unanswered this long counts as lost (hung).")
@click.option("--serve-args", default="--memory-budget 1.5GiB --kv-budget 64MiB "
              "--max-waiting 16", show_default=True)
@click.option("--out", default="results/soak.json", show_default=True)
def main(zoo_dir, models, duration, max_requests, concurrency, seed, client_timeout,
         serve_args, out):
    names = [m.strip() for m in models.split(",") if m.strip()]
    argv = ["-m", "blockllm.cli", "serve", "--models", ",".join(names), *serve_args.split()]
    if zoo_dir:
        argv += ["--zoo", zoo_dir]
    with server_process(argv) as (url, proc):
        for m in names:  # warm: load every block once, so memory is compared warm to warm
            httpx.post(url + "/v1/completions", json={"model": m, "prompt": "hi",
                                                      "max_tokens": 2}, timeout=300)
        rss0 = process_rss(proc.pid)
        t0 = time.monotonic()
        tally, reasons = asyncio.run(soak(url, names, duration, max_requests, concurrency, seed,
                                          client_timeout))
        wall = time.monotonic() - t0
        time.sleep(2)  # let aborted requests drain
        metrics = httpx.get(url + "/metrics", timeout=30).text
        rss1 = process_rss(proc.pid)
        alive = httpx.get(url + "/health", timeout=30).json()["status"]
    report = {"duration_s": wall, "models": names, "serve_args": serve_args, "seed": seed,
              "concurrency": concurrency, **{k: tally[k] for k in (
                  "sent", "answered", "rejected", "failed", "disconnected", "lost")},
              "reasons": dict(reasons.most_common()), "rss_start": rss0, "rss_end": rss1,
              "kv_pages_used_end": metric(metrics, "blockllm_kv_pages_used") or 0.0,
              "running_end": metric(metrics, "blockllm_requests_running") or 0.0,
              "waiting_end": metric(metrics, "blockllm_requests_waiting") or 0.0,
              "health_end": alive}
    accounted = sum(report[k] for k in ("answered", "rejected", "failed", "disconnected", "lost"))
    report["unaccounted"] = report["sent"] - accounted
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=1))
    for k, v in report.items():
        click.echo(f"{k:18s} {v}")
    if report["lost"] or report["unaccounted"] or report["kv_pages_used_end"]:
        raise SystemExit("soak: requests lost or KV pages leaked")


if __name__ == "__main__":
    main()
