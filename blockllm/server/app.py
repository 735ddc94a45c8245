"""The HTTP API: /v1/completions, /v1/chat/completions (SSE streaming), /v1/models, /health,
/metrics. Errors use OpenAI's body: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException

from blockllm.errors import Busy, UserError
from blockllm.server.async_engine import AsyncEngine
from blockllm.server.choices import (Choice, Event, Plan, best_n, chat_logprobs,
                                     completion_logprobs, merged, submit_all)
from blockllm.server.guards import Guards
from blockllm.server.metrics import Metrics
from blockllm.server.protocol import (ChatRequest, CompletionRequest, DetokenizeRequest,
                                      TokenizeRequest)


@dataclass(frozen=True)
class ServerConfig:
    api_key: str | None = None  # when set, every route but /health needs 'Bearer <key>'
    max_body_bytes: int = 1 << 20  # larger request bodies get 413
    request_timeout_s: float | None = 600.0  # a request running longer ends with an error


def error(status: int, message: str, kind: str = "invalid_request_error", param=None,
          headers=None):
    return JSONResponse(status_code=status, headers=headers, content={"error": {
        "message": message, "type": kind, "param": param, "code": status}})


def _fingerprint(tok) -> tuple:
    """Tokenizers that encode and name their special tokens alike count as one."""
    probe = "Hello, world! 123 \u00e9"
    return (type(tok).__name__, tuple(tok.encode(probe)), getattr(tok, "eos_token", None),
            getattr(tok, "vocab_size", None))


def create_app(aengine: AsyncEngine, tokenizers: dict,
               server: ServerConfig = ServerConfig()) -> FastAPI:
    app = FastAPI(title="blockllm", docs_url=None, redoc_url=None)
    app.add_middleware(Guards, api_key=server.api_key, max_body_bytes=server.max_body_bytes)
    metrics = Metrics(aengine)
    engine = aengine.engine

    @app.exception_handler(RequestValidationError)
    async def _invalid(_, exc: RequestValidationError):
        errors = sorted(exc.errors(), key=lambda e: e.get("type") != "extra_forbidden")
        first = errors[0] if errors else {}  # an unknown field first: it names what to drop
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

    # vLLM's tokenizer routes (lm-evaluation-harness's `remote` tokenizer uses them): the
    # named model's tokenizer, or with no model the one every served model shares
    shared = len({_fingerprint(t) for t in tokenizers.values()}) == 1  # once, not per call

    def _tokenizer(model: str | None):
        if model is not None:
            _check_model(model)
            return tokenizers[model]
        if not shared:
            raise UserError("the served models have different tokenizers: send `model`")
        return next(iter(tokenizers.values()))

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest):
        tok = _tokenizer(body.model)
        ids = tok.encode(body.prompt, add_special_tokens=body.add_special_tokens)
        return {"tokens": list(ids), "count": len(ids),
                "max_model_len": min(c.max_position_embeddings for c in engine.models.values())}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest):
        return {"prompt": _tokenizer(body.model).decode(body.tokens)}

    @app.get("/tokenizer_info")
    async def tokenizer_info(model: str | None = None):
        tok = _tokenizer(model)
        return {k: getattr(tok, k, None) for k in ("eos_token", "bos_token", "pad_token",
                                                   "chat_template")}

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

    async def _generate(body, prompts: list[list[int]], chat: bool, echo: list[str] | None):
        """One choice per prompt x n (index = prompt * n + i, seed + i), streamed or whole."""
        tok = tokenizers[body.model]
        cfg = engine.models[body.model]
        extra_stops = frozenset(body.stop_token_ids or ())
        if any(not 0 <= i < cfg.vocab_size for i in extra_stops | set(body.logit_bias or {})):
            raise UserError(f"stop_token_ids and logit_bias ids must be in [0, {cfg.vocab_size})")
        longest = max(len(p) for p in prompts)
        max_tokens = body.max_tokens if body.max_tokens is not None else \
            max(1, cfg.max_position_embeddings - longest)
        plan = Plan(body.model, max_tokens,
                    extra_stops | (frozenset() if body.ignore_eos else
                                   frozenset(cfg.eos_token_ids)),
                    tuple(body.stop_list()), body.include_stop_str_in_output, body.min_tokens,
                    server.request_timeout_s)
        echo_lps = body.prompt_logprobs_k() is not None
        per = body.per_prompt()  # n, or best_of sequences of which the n best are returned
        choices = [Choice(p * per + i, ids, echo[p] if echo else "", echo_lps)
                   for p, ids in enumerate(prompts) for i in range(per)]
        submit_all(aengine, plan, choices,
                   [body.sampling(c.index % per, ranked=per > body.n) for c in choices])
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        want_lp = body.top_logprobs_k() is not None

        def logprobs(c: Choice, lps) -> dict | None:
            if not want_lp:
                return None
            return chat_logprobs(tok, lps) if chat else completion_logprobs(tok, lps, c)

        def chunk(e: Event) -> dict:
            lp = logprobs(choices[e.index], e.logprobs)
            if chat:
                choice = {"index": e.index, "delta": {"role": "assistant", "content": e.text},
                          "logprobs": lp, "finish_reason": e.finish}
                return {"id": rid, "object": "chat.completion.chunk", "created": created,
                        "model": body.model, "choices": [choice]}
            return {"id": rid, "object": "text_completion", "created": created,
                    "model": body.model, "choices": [{"index": e.index, "text": e.text,
                                                      "finish_reason": e.finish,
                                                      "logprobs": lp}]}

        def usage() -> dict:  # read once every choice finished (the engine is done with them)
            p, n = sum(len(x) for x in prompts), sum(c.completion_tokens for c in choices)
            return {"prompt_tokens": p, "completion_tokens": n, "total_tokens": p + n}
        stream = merged(aengine, tok, plan, choices)
        if body.stream:
            async def sse():
                try:
                    async for e in stream:
                        yield f"data: {json.dumps(chunk(e))}\n\n"
                except Exception as e:  # noqa: BLE001 - the stream has begun: an error event
                    yield f"data: {json.dumps({'error': {'message': str(e), 'code': 500}})}\n\n"
                if body.stream_options and body.stream_options.include_usage:
                    last = {"id": rid, "object": "chat.completion.chunk" if chat else
                            "text_completion", "created": created, "model": body.model,
                            "choices": [], "usage": usage()}
                    yield f"data: {json.dumps(last)}\n\n"
                yield "data: [DONE]\n\n"
            return StreamingResponse(sse(), media_type="text/event-stream")
        try:
            async for _ in stream:
                pass
        except RuntimeError as e:
            timeout = "timed out" in str(e)
            return error(504 if timeout else 500, str(e), "timeout" if timeout else "server_error")
        if chat:
            out = [{"index": c.index, "message": {"role": "assistant", "content": c.text},
                    "logprobs": logprobs(c, c.logprobs), "finish_reason": c.finish}
                   for c in choices]
            return {"id": rid, "object": "chat.completion", "created": created,
                    "model": body.model, "choices": out, "usage": usage()}
        kept = best_n(choices, per, body.n) if per > body.n else choices
        for c in kept:
            c.offset = 0 if c.echo_lps else len(c.echo)
        out = [{"index": j, "text": c.text, "finish_reason": c.finish,
                "logprobs": logprobs(c, c.logprobs)} for j, c in enumerate(kept)]
        return {"id": rid, "object": "text_completion", "created": created, "model": body.model,
                "choices": out, "usage": usage()}

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
        prompts = [list(p) if isinstance(p, list) else tok.encode(p) for p in body.prompts()]
        vocab = engine.models[body.model].vocab_size
        if any(not 0 <= i < vocab for p in prompts for i in p):
            raise UserError(f"prompt token ids must be in [0, {vocab})")
        echo = [p if isinstance(p, str) else tok.decode(p, skip_special_tokens=True)
                for p in body.prompts()] if body.echo else None
        return await _generate(body, prompts, chat=False, echo=echo)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest):
        _check_model(body.model)
        tok = tokenizers[body.model]
        ids = tok.apply_chat_template([m.template_dict() for m in body.messages], tokenize=True,
                                      add_generation_prompt=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        return await _generate(body, [ids], chat=True, echo=None)

    @app.on_event("shutdown")
    def _shutdown():
        aengine.stop()

    return app
