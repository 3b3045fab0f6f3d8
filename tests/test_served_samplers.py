"""vllm-plugin-samplers over HTTP with the official ``openai`` client."""

from __future__ import annotations

import openai
import pytest
import torch

pytestmark = pytest.mark.engine

PROMPT = [7, 8, 9, 10, 7, 8, 9, 10, 7, 8]


def token_ids(choice_logprobs) -> list[int]:
    return [int(t.split(":")[1]) for t in choice_logprobs]


def complete(client, xargs=None, prompt=PROMPT, n=24, **kw):
    extra = {"return_tokens_as_token_ids": True, "ignore_eos": True}
    if xargs is not None:
        extra["vllm_xargs"] = xargs
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=n, temperature=0, logprobs=1,
                                  extra_body=extra, **kw)
    return token_ids(r.choices[0].logprobs.tokens)


@pytest.fixture(scope="module")
def hf(tiny_causal_lm):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_causal_lm, dtype=torch.float32).eval()


def hf_generate(hf, prompt, n, **kw):
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, min_new_tokens=n, **kw)
    return out[0, len(prompt):].tolist()


def test_completions_no_repeat_ngram_matches_transformers(openai_client, hf):
    plain = complete(openai_client)
    assert plain == hf_generate(hf, PROMPT, 24)
    for size in (1, 2, 3):
        got = complete(openai_client, {"no_repeat_ngram_size": size})
        assert got == hf_generate(hf, PROMPT, 24, no_repeat_ngram_size=size), size
    assert complete(openai_client, {"no_repeat_ngram_size": 1}) != plain


def test_chat_completions_with_vllm_xargs(openai_client, shared_server):
    def chat(xargs=None):
        extra = {"return_tokens_as_token_ids": True, "ignore_eos": True}
        if xargs:
            extra["vllm_xargs"] = xargs
        r = openai_client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "again and again and again"}],
            max_tokens=20, temperature=0, logprobs=True, extra_body=extra)
        return [int(c.token.split(":")[1]) for c in r.choices[0].logprobs.content]

    banned_all = chat({"no_repeat_ngram_size": 1})
    assert len(banned_all) == len(set(banned_all)) == 20
    dry = chat({"dry_multiplier": 50.0, "dry_allowed_length": 1, "dry_sequence_breakers": '["\\n"]'})
    xtc = chat({"xtc_threshold": 0.05, "xtc_probability": 1.0, "xtc_under_greedy": True})
    plain = chat()
    assert len(dry) == len(xtc) == len(plain) == 20
    assert xtc != plain
    assert chat({"xtc_threshold": 0.05, "xtc_probability": 1.0}) == plain  # greedy: no XTC unless asked
    # The custom breaker set was resolved by the front end, not inside an engine step.
    assert "resolved inside the engine step" not in shared_server.log_text()


@pytest.mark.parametrize(("xargs", "field"), [
    ({"no_repeat_ngram_size": -2}, "no_repeat_ngram_size"),
    ({"dry_multiplier": 1.0, "dry_allowed_length": "two"}, "dry_allowed_length"),
    ({"xtc_threshold": 1.5, "xtc_probability": 0.5}, "xtc_threshold"),
    ({"dry_multiplier": 1.0, "dry_sequence_breakers": "not json"}, "dry_sequence_breakers"),
])
def test_bad_arguments_are_http_400_and_server_keeps_serving(openai_client, xargs, field):
    with pytest.raises(openai.BadRequestError) as err:
        complete(openai_client, xargs, n=4)
    assert err.value.status_code == 400
    assert field in str(err.value)
    assert len(complete(openai_client, n=4)) == 4


def test_webui_breaker_string_and_xtc_probability_alone_are_accepted(openai_client):
    """text-generation-webui's comma-separated breakers; XTC's threshold defaults to 0.1."""
    webui = complete(openai_client, {"dry_multiplier": 0.8, "dry_sequence_breakers": '"\\n", ":", "\\"", "*"'}, n=6)
    as_list = complete(openai_client, {"dry_multiplier": 0.8, "dry_sequence_breakers": ["\n", ":", '"', "*"]}, n=6)
    assert webui == as_list
    # JSON true reaches the engine as 1 (vllm_xargs holds strings and numbers): both are accepted.
    default = complete(openai_client, {"xtc_probability": 1.0, "xtc_under_greedy": True}, n=6)
    assert default == complete(openai_client, {"xtc_probability": 1.0, "xtc_threshold": 0.1,
                                               "xtc_under_greedy": 1}, n=6)


def test_long_repetitive_dry_prompts_do_not_delay_a_plain_request(openai_client):
    """Adversarial: four DRY requests whose 4000-token prompts are one token
    repeated (the O(n^2) worst case of a naive matcher: about 0.6 s each at
    this length on this machine) run beside a plain request. The plain
    request's latency beside them exceeds its latency beside the same prompts
    without DRY (vLLM's own prefill cost) by at most 1 s."""
    import concurrent.futures
    import time

    def plain():
        t = time.perf_counter()
        complete(openai_client, n=8)
        return time.perf_counter() - t

    long_prompt = [9] * 4000  # shared server: --max-model-len 4096
    dry = {"dry_multiplier": 0.8, "dry_allowed_length": 2, "dry_base": 1.0001}  # no exponent clamp: full matches

    def plain_beside(xargs):
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            hostile = [pool.submit(complete, openai_client, xargs, long_prompt, 96) for _ in range(4)]
            time.sleep(0.2)  # the long requests are admitted first, and still decoding
            beside = pool.submit(plain).result()
            assert all(len(h.result()) == 96 for h in hostile)
        return beside

    plain_beside(None)  # warm-up: long prefills, cache growth
    control = min(plain_beside(None) for _ in range(2))
    with_dry = min(plain_beside(dry) for _ in range(2))
    print(f"\nplain request beside 4 long prompts: {control:.2f} s without DRY, {with_dry:.2f} s with DRY")
    assert with_dry <= control + 1.0, (control, with_dry)
