"""The HTTP API: /v1/completions, /v1/chat/completions (SSE streaming), /v1/models, /health,
/metrics. Errors use OpenAI's body: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException

from blockllm.errors import Busy, UserError
from blockllm.models.sampling import SamplingParams
from blockllm.server.async_engine import AsyncEngine
from blockllm.server.detokenize import TextStream
from blockllm.server.guards import Guards
from blockllm.server.metrics import Metrics
from blockllm.server.protocol import ChatRequest, CompletionRequest


@dataclass(frozen=True)
class ServerConfig:
    api_key: str | None = None  # when set, every route but /health needs 'Bearer <key>'
    max_body_bytes: int = 1 << 20  # larger request bodies get 413
    request_timeout_s: float | None = 600.0  # a request running longer ends with an error


def error(status: int, message: str, kind: str = "invalid_request_error", param=None,
          headers=None):
    return JSONResponse(status_code=status, headers=headers, content={"error": {
        "message": message, "type": kind, "param": param, "code": status}})


def create_app(aengine: AsyncEngine, tokenizers: dict,
               server: ServerConfig = ServerConfig()) -> FastAPI:
    app = FastAPI(title="blockllm", docs_url=None, redoc_url=None)
    app.add_middleware(Guards, api_key=server.api_key, max_body_bytes=server.max_body_bytes)
    metrics = Metrics(aengine)
    engine = aengine.engine

    @app.exception_handler(RequestValidationError)
    async def _invalid(_, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return error(400, f"{loc or 'body'}: {first.get('msg', 'invalid request')}", param=loc)

    @app.exception_handler(HTTPException)
    async def _http(_, exc: HTTPException):
        return error(exc.status_code, str(exc.detail), "not_found_error"
                     if exc.status_code == 404 else "invalid_request_error")

    @app.get("/health")
    async def health():
        return {"status": "ok" if aengine.error is None else "degraded"}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        data, resident = [], aengine.snapshot["resident"]
        for name, chain in engine.chains.items():  # chains and replicas never change
            keys = [engine.key(name, e) for e in chain]
            data.append({"id": name, "object": "model", "owned_by": "blockllm",
                         "blocks": len(chain),
                         "resident_blocks": sum(any(r in resident  # on any replica
                                                    for r in engine.replicas[k])
                                                for k in keys)})
        return {"object": "list", "data": data}

    async def _generate(body, prompt_ids: list[int], chat: bool):
        tok = tokenizers[body.model]
        stops = body.stop_list()
        params = SamplingParams(temperature=body.temperature, top_p=body.top_p,
                                top_k=body.top_k, seed=body.seed)
        cfg = engine.models[body.model]
        max_tokens = body.max_tokens or max(1, cfg.max_position_embeddings - len(prompt_ids))
        stop_ids = frozenset() if body.ignore_eos else frozenset(cfg.eos_token_ids)
        ticket = aengine.submit(body.model, prompt_ids, params, max_tokens, stop_ids,
                                body.min_tokens)
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created = int(time.time())

        async def events():
            """(delta text, finish_reason or None), applying stop strings and the timeout."""
            stream, finish = TextStream(tok, stop_ids, stops), None
            deadline = time.monotonic() + (server.request_timeout_s or float("inf"))
            try:
                while finish is None:
                    try:
                        kind, value = await asyncio.wait_for(
                            ticket.events.get(), min(deadline - time.monotonic(), 1e9))
                    except TimeoutError:
                        raise RuntimeError(f"error: request timed out after "
                                           f"{server.request_timeout_s:g} s") from None
                    if kind == "finish":
                        if isinstance(value, Exception):  # refused on the engine thread
                            raise value
                        finish = "length" if value == "length" else "stop"
                        if value and value.startswith("error"):
                            raise RuntimeError(value)
                        yield stream.finish(), finish
                        break
                    delta = stream.push(value)  # O(1) in the answer's length
                    if stream.stopped:
                        finish = "stop"
                        aengine.abort(ticket)
                        yield delta, finish
                    elif delta:
                        yield delta, None
            finally:
                if finish is None:
                    aengine.abort(ticket)  # the client went away: free its KV and queue slots

        def chunk(delta: str, finish):
            if chat:
                return {"id": rid, "object": "chat.completion.chunk", "created": created,
                        "model": body.model, "choices": [{"index": 0, "delta": {
                            "role": "assistant", "content": delta}, "finish_reason": finish}]}
            return {"id": rid, "object": "text_completion", "created": created,
                    "model": body.model, "choices": [{"index": 0, "text": delta,
                                                      "finish_reason": finish,
                                                      "logprobs": None}]}

        def usage() -> dict:  # read once the request finished (the engine is done with it)
            n = len(ticket.req.output) if ticket.req is not None else 0
            return {"prompt_tokens": len(prompt_ids), "completion_tokens": n,
                    "total_tokens": len(prompt_ids) + n}
        if body.stream:
            async def sse():
                try:
                    async for delta, finish in events():
                        yield f"data: {json.dumps(chunk(delta, finish))}\n\n"
                except Exception as e:  # noqa: BLE001 - the stream has begun: an error event
                    yield f"data: {json.dumps({'error': {'message': str(e), 'code': 500}})}\n\n"
                if body.stream_options and body.stream_options.include_usage:
                    last = {**chunk("", None), "choices": [], "usage": usage()}
                    yield f"data: {json.dumps(last)}\n\n"
                yield "data: [DONE]\n\n"
            return StreamingResponse(sse(), media_type="text/event-stream")
        text, finish = "", None
        try:
            async for delta, finish in events():
                text += delta
        except RuntimeError as e:
            timeout = "timed out" in str(e)
            return error(504 if timeout else 500, str(e), "timeout" if timeout else "server_error")
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "finish_reason": finish}
            return {"id": rid, "object": "chat.completion", "created": created,
                    "model": body.model, "choices": [choice], "usage": usage()}
        return {"id": rid, "object": "text_completion", "created": created, "model": body.model,
                "choices": [{"index": 0, "text": text, "finish_reason": finish,
                             "logprobs": None}], "usage": usage()}

    def _check_model(name: str):
        if name not in engine.models:
            raise UserError(f"model {name!r} does not exist; served: {', '.join(engine.models)}")

    @app.exception_handler(UserError)
    async def _user(_, exc: UserError):
        status = 404 if "does not exist" in str(exc) else 400
        return error(status, str(exc), "not_found_error" if status == 404 else
                     "invalid_request_error")

    @app.exception_handler(Busy)
    async def _busy(_, exc: Busy):
        return error(429, str(exc), "rate_limit_error",
                     headers={"Retry-After": str(max(1, round(exc.retry_after_s)))})

    @app.exception_handler(ValueError)
    async def _value(_, exc: ValueError):
        return error(400, str(exc))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        _check_model(body.model)
        tok = tokenizers[body.model]
        ids = list(body.prompt) if isinstance(body.prompt, list) else tok.encode(body.prompt)
        vocab = engine.models[body.model].vocab_size
        if any(not 0 <= i < vocab for i in ids):
            raise UserError(f"prompt token ids must be in [0, {vocab})")
        return await _generate(body, ids, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest):
        _check_model(body.model)
        tok = tokenizers[body.model]
        ids = tok.apply_chat_template([m.model_dump(exclude_none=True) for m in body.messages],
                                      tokenize=True,
                                      add_generation_prompt=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        return await _generate(body, ids, chat=True)

    @app.on_event("shutdown")
    def _shutdown():
        aengine.stop()

    return app
