"""Request bodies of the OpenAI API subset we serve, validated by pydantic.

Every field is either implemented or refused: an unknown field is a 400 naming it (pydantic's
extra="forbid"), and a field of the OpenAI/vLLM API that we know but do not implement yet is
accepted only at its no-op value (`_NOT_YET`), else a 400 naming it. Nothing is silently dropped.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False  # a last chunk with no choices and the request's usage


# field -> the values that change nothing (what clients such as `vllm bench serve` send)
_NOT_YET: dict[str, tuple[Any, ...]] = {
    "suffix": (None,), "tools": (None, []), "tool_choice": (None, "none"),
    "functions": (None, []), "response_format": (None, {"type": "text"}),
    "parallel_tool_calls": (None,),
}
MAX_CHOICES = 64  # prompts x n in one request
MAX_LOGPROBS = 20  # top logprobs per token, as OpenAI allows


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
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)  # choices per prompt (seed + i each)
    user: str | None = None  # an end-user id (OpenAI: for abuse monitoring); recorded nowhere
    ignore_eos: bool = False  # vLLM's extension: generate past EOS up to max_tokens
    min_tokens: int = Field(default=0, ge=0)  # vLLM's extension: no EOS before this many
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=10.0)  # vLLM's extension
    logit_bias: dict[int, float] | None = None  # token id -> bias in [-100, 100]
    stop_token_ids: list[int] | None = None  # vLLM's extension: these ids end the answer too
    include_stop_str_in_output: bool = False  # vLLM's extension: keep the stop string
    # known fields, accepted only at their no-op values until implemented (see _NOT_YET)
    suffix: Any = None
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    response_format: Any = None
    parallel_tool_calls: Any = None

    @model_validator(mode="after")
    def _refuse_what_we_do_not_do(self):
        for name, noop in _NOT_YET.items():
            value = getattr(self, name)
            if not any(value == v and type(value) is not bool or value is v for v in noop):
                raise ValueError(f"{name}={value!r} is not supported by this server "
                                 f"(leave it out, or send {noop[0]!r})")
        if self.logit_bias and any(not -100 <= b <= 100 for b in self.logit_bias.values()):
            raise ValueError("logit_bias: each bias must be in [-100, 100]")
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


    def top_logprobs_k(self) -> int | None:
        """How many top logprobs per token (None: no logprobs)."""
        raise NotImplementedError

    def prompt_logprobs_k(self) -> int | None:
        """The same for the prompt's tokens (completions with echo)."""
        return None

    def per_prompt(self) -> int:
        """Sequences generated per prompt (n; best_of where it asks for more)."""
        return self.n

    def sampling(self, seed_offset: int = 0, ranked: bool = False):
        """The engine's parameters of one sequence; `ranked`: it competes on its cumulative
        logprob (best_of), so its logprobs are computed even if the client did not ask."""
        from blockllm.models.sampling import SamplingParams
        k = self.top_logprobs_k()
        return SamplingParams(
            temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
            seed=None if self.seed is None else self.seed + seed_offset,
            logprobs=0 if k is None and ranked else k, prompt_logprobs=self.prompt_logprobs_k(),
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty,
            logit_bias=tuple(sorted((self.logit_bias or {}).items())))


class CompletionRequest(_Common):
    # a string, token ids, or a batch of either: one choice (times n) per prompt
    prompt: str | list[int] | list[str] | list[list[int]] = Field(min_length=1)
    max_tokens: int | None = Field(default=16, ge=0, le=1 << 20)
    best_of: int | None = Field(default=None, ge=1, le=MAX_CHOICES)  # generated per prompt;
    #   the n of highest cumulative logprob are returned
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False  # the prompt's text before each choice's text

    @model_validator(mode="after")
    def _supported(self):
        if self.best_of is not None and self.best_of < self.n:
            raise ValueError(f"best_of ({self.best_of}) must be at least n ({self.n})")
        if self.per_prompt() > self.n and self.stream:
            raise ValueError("best_of greater than n cannot be streamed (as in the OpenAI API)")
        if self.max_tokens == 0 and not (self.echo and self.logprobs is not None):
            raise ValueError("max_tokens=0 scores the prompt alone: it needs echo=true and "
                             "logprobs")
        if len(self.prompts()) * self.per_prompt() > MAX_CHOICES:
            raise ValueError(f"prompts x n (or best_of) must be at most {MAX_CHOICES}")
        return self

    def per_prompt(self) -> int:
        return max(self.n, self.best_of or 0)

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str) or isinstance(p[0], int):
            return [p]
        if any(not x for x in p):
            raise ValueError("prompt: an empty prompt in the batch")
        return list(p)

    def top_logprobs_k(self) -> int | None:
        return self.logprobs

    def prompt_logprobs_k(self) -> int | None:
        return self.logprobs if self.echo else None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str | list[dict]  # a string, or text parts joined with newlines (as vLLM)
    name: str | None = None  # OpenAI's participant name; not part of the chat template

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts(cls, content):
        if isinstance(content, str):
            return content
        if not isinstance(content, list):
            raise ValueError("content must be a string or a list of content parts")
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text":
                raise ValueError(f"content part type {kind!r} is not supported by this server "
                                 "(text parts only)")
            if not isinstance(part.get("text"), str) or set(part) - {"type", "text"}:
                raise ValueError("a text content part is {\"type\": \"text\", \"text\": str}")
        return content

    def template_dict(self) -> dict:
        text = self.content if isinstance(self.content, str) else \
            "\n".join(p["text"] for p in self.content)
        return {"role": self.role, "content": text}


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=1 << 20)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)

    def top_logprobs_k(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    @model_validator(mode="after")
    def _one_length(self):
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs=true")
        if self.max_completion_tokens is not None:
            if self.max_tokens is not None and self.max_tokens != self.max_completion_tokens:
                raise ValueError("max_tokens and max_completion_tokens differ: send one")
            self.max_tokens = self.max_completion_tokens
        return self


class TokenizeRequest(BaseModel):  # vLLM's /tokenize
    model_config = ConfigDict(extra="forbid")

    prompt: str
    model: str | None = None
    add_special_tokens: bool = True


class DetokenizeRequest(BaseModel):  # vLLM's /detokenize
    model_config = ConfigDict(extra="forbid")

    tokens: list[int]
    model: str | None = None
