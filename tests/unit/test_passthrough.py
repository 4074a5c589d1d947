import orjson

from extproc.translate.base import Api, Target
from extproc.translate.client_request import parse_request
from extproc.translate.passthrough import AnthropicPassthrough, OpenAIPassthrough
from tests.unit.translating import translate

USER = {"role": "user", "content": "q"}


def test_model_is_rewritten_and_max_tokens_clamped_without_touching_the_parsed_body():
    body = {"model": "alias", "max_tokens": 128000, "messages": [USER]}
    upstream = translate(AnthropicPassthrough(), body, Target(model="real-id", max_output_tokens=8192))
    assert orjson.loads(upstream.body) == {"model": "real-id", "max_tokens": 8192, "messages": [USER]}
    assert upstream.path == "/v1/messages"
    assert body["model"] == "alias" and body["max_tokens"] == 128000


def test_unsigned_thinking_from_another_provider_is_not_replayed_to_anthropic():
    history = [
        {"role": "user", "content": "q"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "from gpt", "signature": ""},
                {"type": "thinking", "thinking": "signed", "signature": "abc"},
                {"type": "text", "text": "a"},
            ],
        },
    ]
    upstream = orjson.loads(
        translate(AnthropicPassthrough(), {"model": "m", "max_tokens": 10, "messages": history}, Target(model="m")).body
    )
    assert [b.get("signature") for b in upstream["messages"][1]["content"]] == ["abc", None]
    assert len(history[1]["content"]) == 3


def test_openai_path_follows_the_provider_base_path():
    upstream = translate(OpenAIPassthrough(), {"model": "a", "messages": [USER]}, Target(model="b", base_path="/v1"))
    assert upstream.path == "/v1/chat/completions"


def test_a_request_that_needs_no_change_goes_on_as_the_clients_own_bytes():
    raw = b'{"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "q"}]}'
    request = parse_request(Api.ANTHROPIC, orjson.loads(raw), raw=raw)
    same = AnthropicPassthrough().request(request, Target(model="m", max_output_tokens=100))
    assert same.unchanged and same.body is raw  # not parsed back into bytes: the same object
    for target in (Target(model="other-id"), Target(model="m", max_output_tokens=5)):
        changed = AnthropicPassthrough().request(request, target)
        assert not changed.unchanged and changed.body != raw
    openai_raw = b'{"model":"a","messages":[{"role":"user","content":"q"}]}'
    openai = parse_request(Api.OPENAI, orjson.loads(openai_raw), raw=openai_raw)
    assert OpenAIPassthrough().request(openai, Target(model="a")).body is openai_raw
