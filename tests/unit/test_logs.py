"""ccr_gateway.logs redaction: every secret shape is masked in every form a log call can take it,
ordinary text and request ids are left alone, and masking twice changes nothing."""

from __future__ import annotations

import base64
import json
import logging
import sys
import uuid

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ccr_gateway.logs import MASK, REDACTION_RULES, JsonFormatter, redact, secret_values
from extproc.auth.keys import format_key, new_key_id, new_secret

ENV = {"CCR_OPENAI_KEY": "not-shaped-like-a-key-1234", "HOME": "/root", "SHORT_TOKEN": "abc", "PATH": "/bin"}


def line(message: str, *args: object, environ: dict[str, str] = ENV) -> dict:
    record = logging.LogRecord("ccr.test", logging.WARNING, __file__, 1, message, args, None)
    return json.loads(JsonFormatter(environ).format(record))


# --- the shapes, one strategy each: the whole token is the secret unless said otherwise -------------

_B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def _chars(alphabet: str, low: int, high: int | None = None) -> st.SearchStrategy[str]:
    return st.text(alphabet, min_size=low, max_size=high if high is not None else low)


def _b64url_json(value: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


_JWT = st.builds(
    lambda header, claims, signature: f"{_b64url_json(header)}.{_b64url_json(claims)}.{signature}",
    st.fixed_dictionaries({"alg": st.sampled_from(["RS256", "HS256", "ES256", "none"]), "kid": _chars(_ALNUM, 1, 12)}),
    st.fixed_dictionaries({"sub": _chars(_ALNUM, 1, 20), "org": _chars(_ALNUM, 1, 10), "exp": st.integers(0, 2**40)}),
    _chars(_B64URL, 0, 342),  # "none" tokens end with an empty signature
)

# shape -> strategy of the secret, as it appears in a log line
SHAPES: dict[str, st.SearchStrategy[str]] = {
    "anthropic": _chars(_B64URL, 20, 95).map(lambda s: f"sk-ant-api03-{s}"),
    "anthropic admin": _chars(_B64URL, 20, 95).map(lambda s: f"sk-ant-admin01-{s}"),
    "openai legacy": _chars(_ALNUM, 48).map(lambda s: f"sk-{s}"),
    "openai project": _chars(_B64URL, 20, 160).map(lambda s: f"sk-proj-{s}"),
    "openai service account": _chars(_B64URL, 20, 160).map(lambda s: f"sk-svcacct-{s}"),
    "google api key": _chars(_B64URL, 35).map(lambda s: f"AIza{s}"),
    "google oauth": _chars(_B64URL, 30, 200).map(lambda s: f"ya29.{s}"),
    "aws access key id": st.tuples(
        st.sampled_from(["AKIA", "ASIA"]), _chars("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)
    ).map("".join),
    "jwt": _JWT,
    "vault service": _chars(_B64URL, 90, 100).map(lambda s: f"hvs.{s}"),
    "vault batch": _chars(_B64URL, 100, 140).map(lambda s: f"hvb.{s}"),
    "vault recovery": _chars(_B64URL, 90, 100).map(lambda s: f"hvr.{s}"),
    "vault legacy service": _chars(_ALNUM, 24).map(lambda s: f"s.{s}"),
}
# Forms a log call puts a token in; the token has a boundary before it in each.
CONTEXTS = (
    "{}",
    "upstream rejected {} (401)",
    "bad key: {}!",
    "headers={{'x-request-id': 'abc', 'x-api-key': '{}'}}",
    '{{"authorization": "Bearer {}"}}',
    "authorization: Bearer {}",
    "(('authorization', 'Bearer {}'),)",
    "x-api-key={}&model=gpt-4o",
    "GET /v1beta/models/gemini-2.5-pro:generateContent?key={}&alt=sse",
    "ValueError('token {} expired')",
    "b'{}'",
    "[{}]",
)


@pytest.mark.parametrize("shape", sorted(SHAPES))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_secret_shape_is_masked_in_every_form(shape: str, data: st.DataObject) -> None:
    secret = data.draw(SHAPES[shape], label="secret")
    text = data.draw(st.sampled_from(CONTEXTS), label="context").format(secret)
    redacted = redact(text)
    assert secret not in redacted
    assert MASK in redacted
    assert redact(redacted) == redacted  # idempotent: Logstash runs the same rules again


@settings(max_examples=100, deadline=None)
@given(context=st.sampled_from(CONTEXTS), key_id=st.builds(new_key_id), secret=st.builds(new_secret))
def test_a_virtual_key_loses_its_secret_and_keeps_its_key_id(context: str, key_id: str, secret: str) -> None:
    redacted = redact(context.format(format_key(key_id, secret)))
    assert secret not in redacted
    assert f"sk-ccr-{key_id}_{MASK}" in redacted
    assert redact(redacted) == redacted


_PASSWORD = _chars(_ALNUM + "!$%*+.~-", 8, 40)


@settings(max_examples=100, deadline=None)
@given(
    scheme=st.sampled_from(["redis", "rediss", "postgresql", "postgres", "amqp", "amqps", "https", "mongodb+srv"]),
    user=st.sampled_from(["", "ccr", "guest", "default"]),
    password=_PASSWORD,
    rest=st.sampled_from(["@localhost:6379/0", "@db.internal/ccr?sslmode=require", "@rabbit:5672/%2F"]),
    context=st.sampled_from(["{}", "cannot connect to {}: refused", "dsn='{}'", 'url="{}"']),
)
def test_a_password_in_a_url_is_masked_and_the_rest_of_the_url_kept(
    scheme: str, user: str, password: str, rest: str, context: str
) -> None:
    assume(password not in rest and password not in context)  # else it is in the line by another right
    url = f"{scheme}://{user}:{password}{rest}"
    redacted = redact(context.format(url))
    assert password not in redacted
    assert f"{scheme}://{user}:{MASK}{rest}" in redacted


@pytest.mark.parametrize(
    "header", ["authorization", "Authorization", "x-api-key", "api-key", "x-goog-api-key", "X-Vault-Token"]
)
@settings(max_examples=30, deadline=None)
@given(value=_chars(_ALNUM + "+/=_-", 12, 80), data=st.data())
def test_credential_headers_lose_their_value_in_header_and_dict_forms(header: str, value: str, data) -> None:
    form = data.draw(
        st.sampled_from(
            [
                "{name}: {value}",
                "{name}: Bearer {value}",
                "{name}={value}",
                "{{'{name}': '{value}', 'content-type': 'application/json'}}",
                '{{"{name}": "{value}", "content-type": "application/json"}}',
                "[('{name}', '{value}'), ('content-type', 'application/json')]",
                '{{\\"{name}\\": \\"{value}\\"}}',  # a JSON body quoted in a repr
            ]
        )
    )
    text = form.format(name=header, value=value)
    redacted = redact(text)
    assert value not in redacted, redacted
    assert header in redacted and MASK in redacted
    assert "application/json" in redacted or "content-type" not in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Basic dXNlcjpwYXNz", f"Authorization: Basic {MASK}"),
        ("api-key: 0123456789abcdef0123456789abcdef", f"api-key: {MASK}"),  # Azure OpenAI
        ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", f"aws_secret_access_key = {MASK}"),
        ("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", f"AWS_SECRET_ACCESS_KEY={MASK}"),
        ("password='correct horse battery'", f"password='{MASK}'"),
        ("client_secret=abc123def456", f"client_secret={MASK}"),
        ("CCR_ADMIN_TOKEN: abc123def456", f"CCR_ADMIN_TOKEN: {MASK}"),
        (
            "Authorization: AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
            "SignedHeaders=host;x-amz-date, Signature=fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024",
            f"Authorization: AWS4-HMAC-SHA256 {MASK}, SignedHeaders=host;x-amz-date, Signature={MASK}",
        ),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nIBAAK==\n-----END RSA PRIVATE KEY-----", MASK),
        ("Bearer sk-ccr-abcd2345_" + "A" * 43, f"Bearer sk-ccr-abcd2345_{MASK}"),
    ],
)
def test_named_secrets_keep_their_name_and_scheme(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "request 3f2a9c1e-8b7d-4e2f-9a1b-0c3d4e5f6a7b: provider fake-openai broke its API: unexpected end of stream",
        "policy generation 7 accepted from /etc/ccr/gateway.yaml (providers: fake-anthropic, fake-openai)",
        "usage input_tokens=11 output_tokens=3 cache_read_input_tokens=0 max_tokens: 1024",
        "key abcd2345 of tenant acme revoked; key_id=abcd2345",
        "trace 0af7651916cd43dd8448eb211c80319c span b7ad6b7169203331",
        "routing claude-sonnet-4-5 -> fake-gemini,gemini-2.5-pro (scenario think)",
        "ledger: connected to RabbitMQ at amqp://guest:***@localhost:5672/",
        "redis at redis://127.0.0.1:6379/0 unreachable; http://127.0.0.1:8080/v1/messages answered 503",
        "the tokenizer counts tokens; secrets are never logged; passwords neither; the monkey: banana",
        "Asia/Tokyo, tasks.py line 12, self.keys.get(key), s.strip()",
        "Bearer tokens are checked by Envoy",
        'File "/work/main/extproc/processor.py", line 100, in handle',
    ],
)
def test_ordinary_lines_are_left_alone(text: str) -> None:
    assert redact(text) == text


_VOCABULARY = (
    "the a request provider model routed to from with failed answered retry upstream policy worker tenant "
    "stream chunk tokens input output usage cache hit miss key id ledger queue spool envoy listener cluster "
    "acme claude-sonnet-4-5 gpt-4o gemini-2.5-pro fake-openai 200 503 0.25s 1024 /v1/messages -> : , ; = ( )"
)
_WORDS = st.sampled_from(_VOCABULARY.split())


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(
        st.one_of(
            _WORDS,
            st.uuids().map(str),  # Envoy's x-request-id
            st.binary(min_size=16, max_size=16).map(bytes.hex),  # trace ids
            st.builds(new_key_id),  # key ids
            st.integers(0, 10**9).map(str),
        ),
        max_size=30,
    )
)
def test_words_request_ids_trace_ids_and_key_ids_are_never_masked(parts: list[str]) -> None:
    text = " ".join(parts)
    assert redact(text) == text


def test_every_rule_has_a_shape_name_and_hints_in_lower_case() -> None:
    for rule in REDACTION_RULES:
        assert rule.shape and rule.hints
        assert all(hint == hint.lower() for hint in rule.hints), rule.shape


# --- through the formatter ---------------------------------------------------------------------------


def test_a_header_map_in_a_warning_loses_its_credentials():
    headers = {
        ":path": "/v1/messages",
        "authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig",
        "x-api-key": "sk-ant-api03-abcdefghijklmnop",
        "x-goog-api-key": "AIzaSyA-1234567890abcdefghijklmnop",
        "content-type": "application/json",
    }
    text = line("attempt headers=%s", headers)["message"]
    assert "eyJhbGci" not in text and "sk-ant" not in text and "AIza" not in text
    assert "'/v1/messages'" in text and "application/json" in text
    assert text.count(MASK) == 3


def test_values_of_secret_environment_variables_are_masked_wherever_they_appear():
    assert line("provider said: bad key not-shaped-like-a-key-1234!")["message"] == f"provider said: bad key {MASK}!"
    assert secret_values(ENV) == ("not-shaped-like-a-key-1234",)  # short and non-secret names left alone


def test_exceptions_are_redacted_too():
    try:
        raise ValueError("upstream rejected sk-proj-secretsecret")
    except ValueError:
        record = logging.LogRecord("ccr.test", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    entry = json.loads(JsonFormatter({}).format(record))
    assert "sk-proj" not in entry["exception"] and MASK in entry["exception"]


def test_a_request_id_holding_a_secret_is_masked_too():
    record = logging.LogRecord("ccr.test", logging.INFO, __file__, 1, "hello", (), None)
    record.request_id = f"{uuid.uuid4()} sk-ant-api03-smuggledsmuggled"
    entry = json.loads(JsonFormatter({}).format(record))
    assert "smuggled" not in entry["request_id"]
