"""deploy/observability/logging: Filebeat, Logstash and Elasticsearch files that agree with each
other and with the log schema. No Filebeat, Logstash or Elasticsearch runs here: the files are
parsed and cross-checked, and the Logstash redaction patterns are run in Python and (when `ruby` is
installed: Logstash's gsub is Ruby's) in Ruby, on the same lines, with the same result."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from ccr_gateway.logs import MASK, REDACTION_RULES, redact

ROOT = Path(__file__).resolve().parents[2]
LOGGING = ROOT / "deploy/observability/logging"
SCHEMA = json.loads((LOGGING / "log-line.schema.json").read_text())
TEMPLATE = json.loads((LOGGING / "elasticsearch/index-template.json").read_text())
ILM_POLICY = json.loads((LOGGING / "elasticsearch/ilm-policy.json").read_text())
PIPELINE = (LOGGING / "logstash/pipeline/ccr-gateway.conf").read_text()
FILEBEAT = yaml.safe_load((LOGGING / "filebeat.yml").read_text())
DOCS = (ROOT / "docs/logging.md").read_text()

_STRING = re.compile(r'"((?:\\.|[^\\"])*)"')  # a Logstash double-quoted string (escapes kept as written)


def gsub_entries(pipeline: str) -> list[tuple[str, str, str]]:
    """(field, pattern, replacement) of the pipeline's gsub array, strings as Logstash reads them."""
    start = pipeline.index("gsub => [") + len("gsub => [")
    strings: list[str] = []
    position = start
    while True:
        while pipeline[position] in " \t\r\n,":
            position += 1
        if pipeline[position] == "]":
            break
        match = _STRING.match(pipeline, position)
        assert match is not None, f"not a string at {pipeline[position : position + 40]!r}"
        strings.append(match[1])
        position = match.end()
    assert len(strings) % 3 == 0
    return [(strings[i], strings[i + 1], strings[i + 2]) for i in range(0, len(strings), 3)]


def expected_gsub() -> list[tuple[str, str, str]]:
    return [(field, rule.pattern, rule.replacement) for field in ("message", "exception") for rule in REDACTION_RULES]


# --- Logstash ----------------------------------------------------------------------------------------


def test_the_logstash_gsub_list_is_the_formatters_rule_list():
    generated = "\n".join(
        f'      "{field}", "{pattern}", "{replacement}",' for field, pattern, replacement in expected_gsub()
    )
    assert gsub_entries(PIPELINE) == expected_gsub(), "regenerate the gsub block:\n" + generated


def test_the_patterns_can_sit_in_logstash_strings():
    for rule in REDACTION_RULES:
        for text in (rule.pattern, rule.replacement):
            assert '"' not in text and not text.endswith("\\"), rule.shape  # no quote, nothing escaping the end


def test_the_pipeline_reads_beats_and_writes_a_daily_rolled_data_stream():
    code = "\n".join(line.split("#", 1)[0] for line in _STRING.sub('""', PIPELINE).splitlines())
    assert code.count("{") == code.count("}")
    for needed in ("input {", "beats {", "filter {", "date {", "mutate {", "output {", "elasticsearch {"):
        assert needed in code
    assert 'data_stream => "true"' in PIPELINE and 'data_stream_dataset => "ccr_gateway"' in PIPELINE
    data_stream = "logs-ccr_gateway-default"
    assert any(fnmatch.fnmatch(data_stream, pattern) for pattern in TEMPLATE["index_patterns"])
    assert ILM_POLICY["policy"]["phases"]["hot"]["actions"]["rollover"]["max_age"] == "1d"


# --- Filebeat ----------------------------------------------------------------------------------------


def test_filebeat_decodes_each_line_as_json_at_the_top_level_and_ships_to_logstash():
    (source,) = FILEBEAT["filebeat.inputs"]
    assert source["type"] == "filestream" and source["id"]
    assert any(path.endswith(".log}") or path.endswith(".log") for path in source["paths"])
    (parser,) = source["parsers"]
    ndjson = parser["ndjson"]
    assert ndjson["target"] == "" and ndjson["overwrite_keys"] is True and ndjson["add_error_key"] is True
    assert FILEBEAT["output.logstash"]["hosts"]
    port = re.search(r'port => "\$\{LOGSTASH_BEATS_PORT:(\d+)\}"', PIPELINE)
    assert port is not None and FILEBEAT["output.logstash"]["hosts"][0].endswith(f":{port[1]}}}")


# --- Elasticsearch -----------------------------------------------------------------------------------

# The schema's fields, by what they are: ids and names are matched exactly, text is searched.
EXPECTED_TYPES = {
    "time": "date",
    "level": "keyword",
    "logger": "keyword",
    "message": "text",
    "process": "keyword",
    "pid": "long",
    "request_id": "keyword",
    "trace_id": "keyword",
    "span_id": "keyword",
    "tenant": "keyword",
    "exception": "text",
}


def test_the_index_template_maps_every_schema_field_and_by_its_kind():
    mapped = TEMPLATE["template"]["mappings"]["properties"]
    assert set(SCHEMA["properties"]) == set(EXPECTED_TYPES)
    assert set(SCHEMA["properties"]) <= set(mapped)
    assert {name: mapped[name]["type"] for name in EXPECTED_TYPES} == EXPECTED_TYPES
    assert mapped["@timestamp"]["type"] == "date"  # a data stream needs it; Logstash sets it from time
    assert TEMPLATE["data_stream"] == {} and TEMPLATE["template"]["mappings"]["dynamic"] is False


def test_the_docs_install_the_template_and_policy_under_the_names_the_template_uses():
    policy_name = TEMPLATE["template"]["settings"]["index.lifecycle.name"]
    assert f"_ilm/policy/{policy_name}" in DOCS
    assert "_index_template/" in DOCS and "elasticsearch/index-template.json" in DOCS


# --- the same redaction in Ruby ----------------------------------------------------------------------

SAMPLES = [
    "attempt headers={':path': '/v1/messages', 'authorization': 'Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln', "
    "'x-api-key': 'sk-ant-api03-abcdefghijklmnopqrst', 'x-goog-api-key': 'AIzaSyA-1234567890abcdefghijklmnop'}",
    "authorization: Bearer sk-ccr-abcd2345_" + "A" * 43 + " from 10.0.0.1",
    '{"x-api-key": "sk-ccr-abcd2345_' + "b" * 43 + '", "api-key": "0123456789abcdef0123456789abcdef"}',
    "redis://:s3cretpw@redis:6379/0 postgresql://ccr:pw123456@db/ccr amqp://guest:guest@localhost:5672/",
    "vault hvs.CAESIJlWh3Lq9aFvZx0o1bX7cQ2yT8nR4kW5mE6uI3pO1sA2Gh4KHGh2cy5abcd legacy s.AbCdEfGhIjKlMnOpQrStUvWx",
    "aws_access_key_id=AKIAIOSFODNN7EXAMPLE aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "Authorization: AWS4-HMAC-SHA256 Credential=ASIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
    "Signature=fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024",
    "GET /v1beta/models/gemini-2.5-pro:generateContent?key=AIzaSyA-1234567890abcdefghijklmnop&alt=sse ya29.a0AfH6SMBx3",
    "password='correct horse battery' client_secret=abc123def456 CCR_ADMIN_TOKEN: abc123def456",
    "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----",
    "request 3f2a9c1e-8b7d-4e2f-9a1b-0c3d4e5f6a7b: usage input_tokens=11 output_tokens=3 key abcd2345",
    "ledger: connected to RabbitMQ at amqp://guest:***@localhost:5672/ (tokens, secrets, passwords: none logged)",
]

_RUBY = """
require "json"
input = JSON.parse($stdin.read)
rules = input["rules"].map { |pattern, replacement| [Regexp.new(pattern), replacement] }
puts JSON.generate(input["lines"].map { |line| rules.reduce(line) { |text, (re, rep)| text.gsub(re, rep) } })
"""


@pytest.mark.skipif(shutil.which("ruby") is None, reason="ruby is not installed (apt-get install ruby)")
def test_ruby_redacts_as_python_does():
    rules = [[rule.pattern, rule.replacement] for rule in REDACTION_RULES]
    result = subprocess.run(
        ["ruby", "-e", _RUBY],
        input=json.dumps({"rules": rules, "lines": SAMPLES}),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "warning" not in result.stderr, result.stderr
    in_ruby = json.loads(result.stdout)
    assert in_ruby == [redact(line) for line in SAMPLES]
    assert all(MASK in line for line in in_ruby[:-2]) and in_ruby[-2:] == SAMPLES[-2:]
