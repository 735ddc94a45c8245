"""A byte-level tokenizer for dummy-weight models, which ship no vocabulary.

Ids 0..2 are <pad>/<bos>/<eos>; byte b is id b + 3. Enough to drive a dummy model through the
same text API as a real one (outputs are noise either way); ids past 258 decode to nothing.
"""

from __future__ import annotations

from blockllm.models.config import LlamaConfig


class ByteTokenizer:
    chat_template = None

    def __init__(self, cfg: LlamaConfig):
        if cfg.vocab_size < 259:
            raise ValueError("the byte tokenizer needs a vocabulary of at least 259 ids")
        self.vocab_size = cfg.vocab_size
        self.bos_token_id, self.eos_token_id, self.pad_token_id = 1, 2, 0

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [b + 3 for b in text.encode("utf-8")]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return bytes(i - 3 for i in ids if 3 <= i < 259).decode("utf-8", errors="replace")

    def apply_chat_template(self, messages, tokenize: bool = False,
                            add_generation_prompt: bool = True, **_):
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
        text += "assistant: " if add_generation_prompt else ""
        return self.encode(text) if tokenize else text

    MARKER = "blockllm_byte_tokenizer.json"

    def save_pretrained(self, path) -> None:
        """Only a marker: the tokenizer is derived from the model's config."""
        from pathlib import Path
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / self.MARKER).write_text('{"type": "byte"}\n')
