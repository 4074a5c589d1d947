import orjson

from extproc.translate.base import Target
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
