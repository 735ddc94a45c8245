"""Request bodies of the OpenAI API subset we serve, validated by pydantic.

Every field is either implemented or refused: an unknown field is a 400 naming it (pydantic's
extra="forbid"), and a field of the OpenAI/vLLM API that we know but do not implement yet is
accepted only at its no-op value (`_NOT_YET`), else a 400 naming it. Nothing is silently dropped.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False  # a last chunk with no choices and the request's usage


# field -> the values that change nothing (what clients such as `vllm bench serve` send)
_NOT_YET: dict[str, tuple[Any, ...]] = {
    "logprobs": (None, False, 0), "top_logprobs": (None, 0), "echo": (False,),
    "presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0),
    "repetition_penalty": (1, 1.0), "logit_bias": (None, {}), "suffix": (None,),
    "tools": (None, []), "tool_choice": (None, "none"), "functions": (None, []),
    "response_format": (None, {"type": "text"}), "stop_token_ids": (None, []),
    "include_stop_str_in_output": (False,), "parallel_tool_calls": (None,),
}


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=1 << 20)
    temperature: float = Field(default=1.0, ge=0.0, le=100.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)  # vLLM's extension: keep the k most likely (0: all)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1)  # one choice per request
    user: str | None = None  # an end-user id (OpenAI: for abuse monitoring); recorded nowhere
    ignore_eos: bool = False  # vLLM's extension: generate past EOS up to max_tokens
    min_tokens: int = Field(default=0, ge=0)  # vLLM's extension: no EOS before this many
    # known fields, accepted only at their no-op values until implemented (see _NOT_YET)
    logprobs: Any = None
    top_logprobs: Any = None
    echo: Any = False
    presence_penalty: Any = 0.0
    frequency_penalty: Any = 0.0
    repetition_penalty: Any = 1.0
    logit_bias: Any = None
    suffix: Any = None
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    response_format: Any = None
    stop_token_ids: Any = None
    include_stop_str_in_output: Any = False
    parallel_tool_calls: Any = None

    @model_validator(mode="after")
    def _refuse_what_we_do_not_do(self):
        for name, noop in _NOT_YET.items():
            value = getattr(self, name)
            if not any(value == v and type(value) is not bool or value is v for v in noop):
                raise ValueError(f"{name}={value!r} is not supported by this server "
                                 f"(leave it out, or send {noop[0]!r})")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) must not exceed max_tokens "
                             f"({self.max_tokens})")
        return self

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        if len(stops) > 16 or any(not s or len(s) > 256 for s in stops):
            raise ValueError("stop: at most 16 non-empty strings of at most 256 characters")
        return stops


class CompletionRequest(_Common):
    prompt: str | list[int] = Field(min_length=1)
    max_tokens: int | None = Field(default=16, ge=1, le=1 << 20)
    best_of: int = Field(default=1, ge=1, le=1)  # one sequence per request


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str
    name: str | None = None  # OpenAI's participant name; not part of the chat template


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=1 << 20)

    @model_validator(mode="after")
    def _one_length(self):
        if self.max_completion_tokens is not None:
            if self.max_tokens is not None and self.max_tokens != self.max_completion_tokens:
                raise ValueError("max_tokens and max_completion_tokens differ: send one")
            self.max_tokens = self.max_completion_tokens
        return self
