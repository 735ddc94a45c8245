"""The OpenAI/vLLM request fields beyond the basics, through the official openai client against a
real server: logprobs (equal to transformers' log-softmax), batch prompts, n, echo, content
parts, penalties and logit_bias (repetition_penalty equal to transformers'), stop_token_ids,
include_stop_str_in_output; and the fields still refused, with a 400 naming them."""

import httpx
import pytest
import torch

from baselines.hf_reference import hf_greedy, hf_model
from blockllm.zoo.export import export_source
from blockllm.zoo.store import Zoo
from tests.test_server import N, PROMPTS, server, served_zoo  # noqa: F401 - fixtures

K = 4  # top logprobs asked for


def _client(url):
    from openai import OpenAI
    return OpenAI(base_url=url + "/v1", api_key="unused")


@pytest.fixture(scope="module")
def hf(served_zoo):  # noqa: F811
    root, _, _ = served_zoo
    zoo = Zoo(root)
    return {m: (hf_model(export_source(zoo, m), merge_adapter=True), zoo.tokenizer(m))
            for m in ("base", "lora", "ft")}


def _greedy_ids(hf, model, prompt, n=N, stop_at_eos=False):
    ref, _ = hf[model]
    ids = hf_greedy(ref, prompt, n)
    return ids[: ids.index(2)] if stop_at_eos and 2 in ids else ids


@pytest.mark.parametrize("model", ["base", "lora"])
def test_logprobs_equal_transformers_log_softmax(server, hf, model):  # noqa: F811
    url, _, _ = server
    ref, tok = hf[model]
    prompt = tok.encode(PROMPTS[0])
    ids = _greedy_ids(hf, model, prompt)
    r = _client(url).completions.create(model=model, prompt=PROMPTS[0], max_tokens=N,
                                        temperature=0, logprobs=K,
                                        extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert lp.tokens == [tok.decode([i], skip_special_tokens=False) for i in ids]
    with torch.no_grad():
        logits = ref(torch.tensor([prompt + ids])).logits[0].float()
    want = torch.log_softmax(logits[len(prompt) - 1: -1], -1)
    torch.testing.assert_close(torch.tensor(lp.token_logprobs),
                               want.gather(1, torch.tensor(ids)[:, None])[:, 0],
                               atol=2e-4, rtol=0)
    for i, top in enumerate(lp.top_logprobs):
        values, idx = torch.topk(want[i], K)
        best = {}  # token strings can repeat (ids that decode alike): the best value each
        for j, v in zip(idx.tolist(), values.tolist()):
            best.setdefault(tok.decode([j], skip_special_tokens=False), v)
        assert list(top) == list(best)
        torch.testing.assert_close(torch.tensor(list(top.values())),
                                   torch.tensor(list(best.values())), atol=2e-4, rtol=0)
        assert lp.token_logprobs[i] == next(iter(top.values()))  # greedy: the chosen is the top
    offsets = [0]
    for i in ids[:-1]:
        offsets.append(offsets[-1] + len(tok.decode([i])))
    assert lp.text_offset == offsets


@pytest.mark.parametrize("model", ["base", "ft"])
def test_echo_with_logprobs_scores_the_prompt_as_transformers(server, hf, model):  # noqa: F811
    """What lm-evaluation-harness sends for a loglikelihood: echo, logprobs, max_tokens 0 or 1;
    the prompt's logprobs equal transformers' (the first token has none)."""
    url, _, _ = server
    ref, tok = hf[model]
    prompt = tok.encode(PROMPTS[3])
    client = _client(url)
    r = client.completions.create(model=model, prompt=PROMPTS[3], max_tokens=0, echo=True,
                                  logprobs=2, temperature=0)
    c = r.choices[0]
    assert c.text == PROMPTS[3] and r.usage.completion_tokens == 0
    lp = c.logprobs
    assert lp.tokens == [tok.decode([i], skip_special_tokens=False) for i in prompt]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    with torch.no_grad():
        logits = ref(torch.tensor([prompt])).logits[0].float()
    want = torch.log_softmax(logits[:-1], -1).gather(1, torch.tensor(prompt[1:])[:, None])[:, 0]
    torch.testing.assert_close(torch.tensor(lp.token_logprobs[1:]), want, atol=2e-4, rtol=0)
    assert all(len(t) <= 2 for t in lp.top_logprobs[1:])
    one = client.completions.create(model=model, prompt=PROMPTS[3], max_tokens=1, echo=True,
                                    logprobs=1, temperature=0).choices[0]
    assert one.logprobs.token_logprobs[:-1] == lp.token_logprobs
    assert one.logprobs.tokens[-1] == tok.decode([int(logits[-1].argmax())],
                                                 skip_special_tokens=False)
    streamed = []
    for chunk in client.completions.create(model=model, prompt=PROMPTS[3], max_tokens=3,
                                           echo=True, logprobs=1, temperature=0, stream=True):
        for ch in chunk.choices:
            streamed += ch.logprobs.token_logprobs if ch.logprobs else []
    assert streamed[: len(prompt)] == lp.token_logprobs and len(streamed) == len(prompt) + 3


def test_chat_logprobs_and_content_parts(server):  # noqa: F811
    url, _, _ = server
    client = _client(url)
    plain = client.chat.completions.create(model="base", messages=[
        {"role": "user", "content": "hi\nthere"}], max_tokens=6, temperature=0, logprobs=True,
        top_logprobs=2)
    parts = client.chat.completions.create(model="base", messages=[
        {"role": "user", "content": [{"type": "text", "text": "hi"},
                                     {"type": "text", "text": "there"}]}],
        max_tokens=6, temperature=0, logprobs=True, top_logprobs=2)
    assert parts.choices[0].message.content == plain.choices[0].message.content
    content = plain.choices[0].logprobs.content
    assert len(content) == plain.usage.completion_tokens
    for e in content:
        assert len(e.top_logprobs) == 2 and e.logprob == e.top_logprobs[0].logprob
        assert e.bytes == list(e.token.encode())
    assert [e.logprob for e in parts.choices[0].logprobs.content] == [e.logprob for e in content]
    r = httpx.post(url + "/v1/chat/completions", json={"model": "base", "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]})
    assert r.status_code == 400 and "image_url" in r.json()["error"]["message"]


def test_batch_prompts_and_n_stream_and_whole(server):  # noqa: F811
    url, _, expected = server
    client = _client(url)
    r = client.completions.create(model="ft", prompt=PROMPTS[:2], n=2, max_tokens=N,
                                  temperature=0)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert [c.text for c in r.choices] == [expected["ft", p] for p in PROMPTS[:2] for _ in "ab"]
    texts = {}
    for chunk in client.completions.create(model="ft", prompt=PROMPTS[:2], n=2, max_tokens=N,
                                           temperature=0, stream=True):
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
    assert [texts[i] for i in range(4)] == [c.text for c in r.choices]
    ids = [[5, 17, 99], [60, 61]]  # token-id prompts, a batch of them
    r = client.completions.create(model="ft", prompt=ids, max_tokens=4, temperature=0)
    assert len(r.choices) == 2 and r.usage.prompt_tokens == 5


def test_n_with_a_seed_is_the_single_requests_with_seed_plus_i(server):  # noqa: F811
    url, _, _ = server
    client = _client(url)
    body = dict(model="lora", prompt="x", max_tokens=8, temperature=1.0)
    many = client.completions.create(**body, n=3, seed=7)
    singles = [client.completions.create(**body, seed=7 + i).choices[0].text for i in range(3)]
    assert [c.text for c in many.choices] == singles
    assert len(set(singles)) > 1  # sampled with different seeds: not all the same


def test_best_of_returns_the_n_most_likely_of_its_sequences(server):  # noqa: F811
    """best_of=4, n=2 with a seed: the two of highest cumulative logprob among the four
    sequences that single requests with seeds 5..8 give, best first."""
    url, _, _ = server
    client = _client(url)
    body = dict(model="ft", prompt=PROMPTS[0], max_tokens=6, temperature=1.0,
                extra_body={"ignore_eos": True})
    r = client.completions.create(**body, n=2, best_of=4, seed=5)
    singles = []
    for i in range(4):
        c = client.completions.create(**body, seed=5 + i, logprobs=0).choices[0]
        singles.append((sum(c.logprobs.token_logprobs), c.text))
    want = [t for _, t in sorted(singles, reverse=True)[:2]]
    assert [c.index for c in r.choices] == [0, 1] and [c.text for c in r.choices] == want
    assert r.choices[0].logprobs is None  # ranked on logprobs the client did not ask for
    assert r.usage.completion_tokens == 4 * 6  # every sequence generated counts


def test_echo_stop_token_ids_and_include_stop_str(server, hf):  # noqa: F811
    url, _, expected = server
    client = _client(url)
    full = expected["base", PROMPTS[1]]
    r = client.completions.create(model="base", prompt=PROMPTS[1], max_tokens=N, temperature=0,
                                  echo=True)
    assert r.choices[0].text == PROMPTS[1] + full
    stop = full[3:5]
    r = client.completions.create(model="base", prompt=PROMPTS[1], max_tokens=N, temperature=0,
                                  stop=[stop], extra_body={"include_stop_str_in_output": True})
    assert r.choices[0].text == full[: full.find(stop)] + stop
    _, tok = hf["base"]
    ids = _greedy_ids(hf, "base", tok.encode(PROMPTS[1]), stop_at_eos=True)
    stop_id = ids[2]
    r = client.completions.create(model="base", prompt=PROMPTS[1], max_tokens=N, temperature=0,
                                  extra_body={"stop_token_ids": [stop_id]})
    assert r.choices[0].text == tok.decode(ids[: ids.index(stop_id)])
    assert r.choices[0].finish_reason == "stop"


def test_repetition_penalty_equals_transformers_and_logit_bias(server, hf):  # noqa: F811
    url, _, _ = server
    ref, tok = hf["base"]
    prompt = tok.encode(PROMPTS[2])
    out = ref.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=N,
                       repetition_penalty=1.5, eos_token_id=[])[0, len(prompt):].tolist()
    r = _client(url).completions.create(model="base", prompt=prompt, max_tokens=N,
                                        temperature=0, extra_body={"repetition_penalty": 1.5,
                                                                   "ignore_eos": True})
    assert r.choices[0].text == tok.decode(out)
    r = _client(url).completions.create(model="base", prompt=prompt, max_tokens=5,
                                        temperature=0, logit_bias={"70": 100})
    assert r.choices[0].text == tok.decode([70] * 5) == "CCCCC"


@pytest.mark.parametrize("body,word", [
    ({"prompt": "x", "n": 65}, "n"),
    ({"prompt": ["a", "b"], "n": 40}, "prompts x n"),
    ({"prompt": "x", "n": 3, "best_of": 2}, "best_of"),
    ({"prompt": "x", "best_of": 3, "stream": True}, "best_of"),
    ({"prompt": ["a", "b"], "best_of": 40}, "best_of"),
    ({"prompt": "x", "logprobs": 21}, "logprobs"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "presence_penalty": 3}, "presence_penalty"),
    ({"prompt": "x", "repetition_penalty": 0}, "repetition_penalty"),
    ({"prompt": "x", "logit_bias": {"5": 101}}, "logit_bias"),
    ({"prompt": "x", "logit_bias": {"99999": 1}}, "logit_bias"),
    ({"prompt": "x", "stop_token_ids": [-1]}, "stop_token_ids"),
    ({"prompt": ["a", ""]}, "prompt"),
    ({"prompt": "x", "suffix": "y"}, "suffix"),
    ({"prompt": "x", "tools": [{"type": "function"}]}, "tools"),
])
def test_unsupported_values_get_a_400_naming_the_field(server, body, word):  # noqa: F811
    url, _, _ = server
    r = httpx.post(url + "/v1/completions", json={"model": "base", **body}, timeout=60)
    assert r.status_code == 400, r.text
    assert word in r.json()["error"]["message"]


def test_vllm_tokenizer_routes(server):  # noqa: F811
    url, models, _ = server
    r = httpx.post(url + "/tokenize", json={"prompt": "hé", "model": "base"}).json()
    assert r["tokens"] == [ord("h") + 3, 0xC3 + 3, 0xA9 + 3] and r["count"] == 3
    assert httpx.post(url + "/detokenize", json={"tokens": r["tokens"]}).json() == \
        {"prompt": "hé"}
    info = httpx.get(url + "/tokenizer_info").json()
    assert set(info) == {"eos_token", "bos_token", "pad_token", "chat_template"}
    r = httpx.post(url + "/tokenize", json={"prompt": "x", "model": "nope"})
    assert r.status_code == 404 and "nope" in r.json()["error"]["message"]
    r = httpx.post(url + "/tokenize", json={"text": "x"})
    assert r.status_code == 400 and "text" in r.json()["error"]["message"]


@pytest.mark.parametrize("kw", [dict(temperature=1.0, seed=3), dict(temperature=0,
                                                                    presence_penalty=1.0)],
                         ids=["sampled", "penalized"])
def test_logprobs_on_the_host_path_do_not_change_the_tokens(server, kw):  # noqa: F811
    """Sampled or penalized requests take their logits to the host: asking for logprobs
    there changes no token, and each reported logprob is at most the best one."""
    url, _, _ = server
    client = _client(url)
    body = dict(model="base", prompt="x", max_tokens=8, extra_body={"ignore_eos": True}, **kw)
    plain = client.completions.create(**body).choices[0]
    with_lp = client.completions.create(**body, logprobs=3).choices[0]
    assert with_lp.text == plain.text and len(with_lp.logprobs.token_logprobs) == 8
    for lp, top in zip(with_lp.logprobs.token_logprobs, with_lp.logprobs.top_logprobs):
        values = list(top.values())
        assert values == sorted(values, reverse=True) and lp <= values[0] + 1e-6
