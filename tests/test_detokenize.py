"""Streamed text: the same as decoding the whole answer, stop strings never streamed even in
part, and a decode window that does not grow with the answer."""

import random
from types import SimpleNamespace

import pytest

from blockllm.loaders.tokenizer import ByteTokenizer
from blockllm.server.detokenize import TextStream

BYTES = ByteTokenizer(SimpleNamespace(vocab_size=300))  # reads only the vocabulary size
TEXT = "héllo wörld, 日本語 and 🎉 again: naïve café " * 3


class Counting:
    """A tokenizer wrapper that records how many ids each decode call reads."""
    def __init__(self, tok):
        self.tok, self.sizes = tok, []

    def decode(self, ids, skip_special_tokens=True):
        self.sizes.append(len(ids))
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)


def stream_all(tok, ids, stops=(), skip=frozenset()):
    s = TextStream(tok, skip, list(stops))
    deltas = [s.push(t) for t in ids]
    return deltas, deltas + [s.finish()], s


def test_deltas_join_to_the_whole_decode_and_never_split_a_character():
    ids = BYTES.encode(TEXT)
    deltas, parts, _ = stream_all(BYTES, ids)
    assert "".join(parts) == TEXT
    assert not any("\ufffd" in d for d in parts)
    assert sum(1 for d in deltas if d) > len(TEXT) // 2  # streamed as it comes, not at the end


def test_stop_tokens_are_not_text():
    ids = BYTES.encode("ab") + [BYTES.eos_token_id] + BYTES.encode("c")
    assert "".join(stream_all(BYTES, ids, skip={BYTES.eos_token_id})[1]) == "abc"


@pytest.mark.parametrize("stops,want", [(["STOP"], "abc "), (["xyz", "OP d"], "abc ST"),
                                        (["S"], "abc "), (["never"], "abc STOP def")])
def test_stop_strings_cut_the_text_and_no_part_of_one_is_streamed(stops, want):
    ids = BYTES.encode("abc STOP def")
    _, parts, s = stream_all(BYTES, ids, stops)
    assert "".join(parts) == want
    assert s.stopped == (want != "abc STOP def")
    streamed = ""
    for d in parts:  # text released at any point never runs into a stop string
        streamed += d
        assert not any(stop in streamed for stop in stops)


def test_the_decode_window_stays_small_over_a_long_answer():
    tok = Counting(BYTES)
    ids = BYTES.encode(TEXT * 20)  # about 3,000 tokens
    stream_all(tok, ids, stops=["never seen"])
    assert max(tok.sizes) <= 8, "each decode reads a few tokens, not the whole answer"
    assert sum(tok.sizes) <= 8 * len(ids)


@pytest.mark.slow
def test_a_real_tokenizer_streams_what_it_decodes(embedded_source):
    tok = embedded_source.load_tokenizer()
    rng = random.Random(0)
    ids = tok.encode(TEXT + " The quick brown fox\n\tjumps over the lazy dog. " * 5)
    for _ in range(5):  # and random token sequences, which split words and bytes anywhere
        ids_r = [rng.randrange(tok.vocab_size) for _ in range(300)]
        for seq in (ids, ids_r):
            assert "".join(stream_all(tok, seq)[1]) == tok.decode(seq, skip_special_tokens=True)


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_an_answer_cut_mid_character_ends_as_the_whole_decode_does(cut):
    """max_tokens can end an answer inside a UTF-8 sequence: the rest comes out at finish."""
    ids = BYTES.encode("ok 🎉")[:-cut] + [290, 131]  # and ids that are no text / a lone byte
    assert "".join(stream_all(BYTES, ids)[1]) == BYTES.decode(ids)


def test_include_stop_keeps_the_stop_string():
    s = TextStream(BYTES, (), ["STOP"], include_stop=True)
    text = "".join(s.push(t) for t in BYTES.encode("abc STOP def")) + s.finish()
    assert text == "abc STOP" and s.stopped
