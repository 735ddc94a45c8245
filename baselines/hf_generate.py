"""The reference point users know: transformers `generate()` behind the same OpenAI API.

Static batching: a worker thread takes the requests of one model that arrived within a short
window (up to `--max-batch`), left-pads them and runs one greedy/sampled `generate()` call; the
whole batch finishes together. Models are loaded whole from the zoo (exported to transformers,
LoRA merged with peft) and evicted least recently used under the same memory budget. A streamed
response arrives as a single chunk when its batch is done, as such a server behaves.

    python -m baselines.hf_generate --zoo DIR --models a,b --port P [--memory-budget 4GiB]
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
import uuid
from collections import OrderedDict

import click
import torch
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse


class HFServer:
    def __init__(self, zoo, models: list[str], budget: int, max_batch: int, window_s: float,
                 max_waiting: int = 1024):
        self.zoo, self.models, self.budget = zoo, models, budget
        self.max_waiting = max_waiting  # beyond it: 429 with Retry-After (bounded inbox)
        self.max_batch, self.window_s = max_batch, window_s
        self.loaded: OrderedDict[str, tuple] = OrderedDict()  # name -> (model, bytes)
        self.tokenizers = {m: zoo.tokenizer(m) for m in models}
        self.inbox: queue.Queue = queue.Queue()
        threading.Thread(target=self._loop, daemon=True).start()

    def _model(self, name: str):
        from baselines.hf_reference import hf_model
        from blockllm.zoo.export import export_source
        if name in self.loaded:
            self.loaded.move_to_end(name)
            return self.loaded[name][0]
        src = export_source(self.zoo, name)
        size = sum(t.numel() * t.element_size() for t in src.tensors.values())
        while self.loaded and sum(b for _, b in self.loaded.values()) + size > self.budget:
            self.loaded.popitem(last=False)
        model = hf_model(src, merge_adapter=True)
        self.loaded[name] = (model, size)
        return model

    def _loop(self) -> None:
        while True:
            first = self.inbox.get()
            batch, deadline = [first], time.perf_counter() + self.window_s
            rest = []
            while len(batch) < self.max_batch and time.perf_counter() < deadline:
                try:
                    item = self.inbox.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                (batch if item["model"] == first["model"] else rest).append(item)
            for item in rest:
                self.inbox.put(item)
            try:
                self._run(batch)
            except Exception as e:  # report to every caller of the batch, keep serving
                for item in batch:
                    item["done"](None, f"error: {e!r}", None)

    @torch.inference_mode()
    def _run(self, batch: list[dict]) -> None:
        model = self._model(batch[0]["model"])
        tok = self.tokenizers[batch[0]["model"]]
        ids = [b["prompt"] if isinstance(b["prompt"], list) else tok.encode(b["prompt"])
               for b in batch]
        width = max(len(i) for i in ids)
        pad = model.generation_config.pad_token_id or 0
        x = torch.tensor([[pad] * (width - len(i)) + i for i in ids])
        mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
        # one generate() per batch: EOS ends a row only if no request of the batch ignores it
        # (rows are cut at their own EOS below); min_new_tokens keeps EOS out until then
        ignore = any(b["ignore_eos"] for b in batch)
        out = model.generate(x, attention_mask=mask, do_sample=False,
                             max_new_tokens=max(b["max_tokens"] for b in batch),
                             min_new_tokens=max(b["min_tokens"] for b in batch),
                             **({"eos_token_id": []} if ignore else {}))
        for b, row, prompt in zip(batch, out[:, width:].tolist(), ids):
            eos = set() if b["ignore_eos"] else set(self.zoo.config(b["model"]).eos_token_ids)
            new = []
            for t in row[: b["max_tokens"]]:
                if t in eos:
                    break
                new.append(t)
            usage = {"prompt_tokens": len(prompt), "completion_tokens": len(new),
                     "total_tokens": len(prompt) + len(new)}
            b["done"](tok.decode(new, skip_special_tokens=True), "length"
                      if len(new) == b["max_tokens"] else "stop", usage)


def create_app(server: HFServer, api_key: str | None = None) -> FastAPI:
    from blockllm.server.app import error
    from blockllm.server.guards import Guards
    app = FastAPI(title="hf_generate baseline")
    app.add_middleware(Guards, api_key=api_key)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": m, "object": "model"} for m in server.models]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        from pydantic import ValidationError

        from blockllm.server.protocol import CompletionRequest
        try:
            req = CompletionRequest.model_validate(await request.json())
        except ValidationError as e:
            first = e.errors()[0]
            return error(400, f"{'.'.join(map(str, first['loc'])) or 'body'}: {first['msg']}")
        except ValueError as e:
            return error(400, f"the body is not JSON: {e}")
        # static greedy batches: what generate() batching cannot do is refused, not ignored
        if req.temperature > 0 or req.stop or req.seed is not None or req.top_k or \
                req.top_p < 1:
            return error(400, "this baseline decodes greedily without stop strings: send "
                              "temperature 0 and no stop, seed, top_k or top_p")
        if req.model not in server.models:
            return error(404, f"model {req.model!r} does not exist")
        body, model, max_tokens = req.model_dump(), req.model, req.max_tokens
        if server.inbox.qsize() >= server.max_waiting:
            return error(429, "the server is busy; retry later", headers={"Retry-After": "1"})
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        server.inbox.put({"model": model, "prompt": req.prompt, "max_tokens": max_tokens,
                          "ignore_eos": req.ignore_eos, "min_tokens": req.min_tokens,
                          "done": lambda text, why, usage: loop.call_soon_threadsafe(
                              fut.set_result, (text, why, usage))})
        text, why, usage = await fut
        if text is None:
            return error(500, why)
        rid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        choice = {"index": 0, "text": text, "finish_reason": why, "logprobs": None}
        if body.get("stream"):
            async def sse():
                head = {"id": rid, "object": "text_completion", "created": created,
                        "model": model}
                yield "data: " + json.dumps({**head, "choices": [choice]}) + "\n\n"
                if (body.get("stream_options") or {}).get("include_usage"):
                    yield "data: " + json.dumps({**head, "choices": [], "usage": usage}) + "\n\n"
                yield "data: [DONE]\n\n"
            return StreamingResponse(sse(), media_type="text/event-stream")
        return {"id": rid, "object": "text_completion", "created": created, "model": model,
                "choices": [choice], "usage": usage}

    return app


@click.command()
@click.option("--zoo", "zoo_dir", default=None)
@click.option("--models", required=True)
@click.option("--port", default=8001, type=int)
@click.option("--host", default="127.0.0.1")
@click.option("--memory-budget", default="4GiB")
@click.option("--kv-budget", default=None, help="Accepted for a uniform harness; unused.")
@click.option("--max-batch", default=8, type=int)
@click.option("--window", default=0.05, type=float, help="Seconds to gather a batch.")
@click.option("--api-key", envvar="BLOCKLLM_API_KEY", default=None)
@click.option("--max-waiting", default=1024, type=int)
def main(zoo_dir, models, port, host, memory_budget, kv_budget, max_batch, window, api_key,
         max_waiting):
    import uvicorn

    from blockllm.units import parse_bytes
    from blockllm.server.async_engine import share_gil_finely
    from blockllm.zoo.store import Zoo
    share_gil_finely()  # its generate() thread shares the GIL with the event loop, as ours
    names = [m.strip() for m in models.split(",") if m.strip()]
    server = HFServer(Zoo(zoo_dir), names, parse_bytes(memory_budget), max_batch, window,
                      max_waiting)
    uvicorn.run(create_app(server, api_key), host=host, port=port, log_level="warning")


if __name__ == "__main__":
    main()
