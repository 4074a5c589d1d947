"""extproc.models: the policy's models in each API's shape, every SDK field, Anthropic's paging."""

from __future__ import annotations

import anthropic.types
import openai.types
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from control_plane.policy import load_policy
from extproc import models
from extproc.routing_table import compile_policy
from extproc.translate.base import Api

POLICY = """
providers:
  - name: ant
    api: anthropic
    base_url: "http://10.0.0.1:8000"
    models:
      - {name: claude-sonnet-4-5, id: sonnet-up, max_output_tokens: 64000, context_window: 200000,
         capabilities: [tools, vision, thinking, web_search]}
      - claude-haiku-4-5
  - {name: oai, api: openai, base_url: "https://api.example.com/v1", models: [gpt-4o, gpt-4o-mini, o3]}
"""
NAMES = ["claude-haiku-4-5", "claude-sonnet-4-5", "gpt-4o", "gpt-4o-mini", "o3"]


@pytest.fixture(scope="module")
def table():
    return compile_policy(load_policy(POLICY).to_proto("v1"), environ={})


def _json(answer: models.ModelsAnswer) -> dict:
    assert answer.status == 200, answer
    return orjson.loads(answer.body)


def test_an_anthropic_item_fills_every_field_of_the_sdks_model_info_from_the_policy(table):
    item = _json(models.retrieve(Api.ANTHROPIC, table, "claude-sonnet-4-5"))
    assert set(item) == set(anthropic.types.ModelInfo.model_fields)
    info = anthropic.types.ModelInfo.model_validate(item)
    assert info.max_input_tokens == 200_000 and info.max_tokens == 64_000
    assert info.lifecycle == "active" and info.created_at.year >= 2025
    assert info.capabilities is not None
    assert info.capabilities.thinking.supported and info.capabilities.image_input.supported
    assert info.capabilities.server_tools.web_search.supported
    assert not info.capabilities.batch.supported  # the gateway has no batch API


def test_what_the_policy_leaves_out_is_null_not_invented(table):
    info = anthropic.types.ModelInfo.model_validate(_json(models.retrieve(Api.ANTHROPIC, table, "claude-haiku-4-5")))
    assert info.max_tokens is None and info.max_input_tokens is None
    assert info.capabilities is not None and not info.capabilities.thinking.supported


def test_an_openai_item_fills_every_field_of_the_sdks_model(table):
    item = _json(models.retrieve(Api.OPENAI, table, "gpt-4o"))
    assert set(item) == set(openai.types.Model.model_fields)
    model = openai.types.Model.model_validate(item)
    assert model.owned_by == "oai" and model.created == models.CREATED_UNIX > 0


def test_the_created_time_is_the_same_on_every_call(table):
    first = models.listing(Api.ANTHROPIC, table, "").body
    assert models.listing(Api.ANTHROPIC, table, "").body == first


def test_an_unknown_id_is_a_404(table):
    answer = models.retrieve(Api.ANTHROPIC, table, "claude-nope")
    assert answer.status == 404 and "claude-nope" in answer.message


def test_ids_are_taken_from_both_paths_and_percent_decoded():
    assert models.model_id_of("/v1/models/claude-sonnet-4-5") == "claude-sonnet-4-5"
    assert models.model_id_of("/models/a%2Fb") == "a/b"
    assert models.model_id_of("/v1/models") is None
    assert models.model_id_of("/v1/models/") is None
    assert models.model_id_of("/v1/messages") is None


def test_the_openai_list_has_every_model_and_no_paging(table):
    body = _json(models.listing(Api.OPENAI, table, "limit=1"))
    assert body["object"] == "list" and [m["id"] for m in body["data"]] == NAMES


def _page(table, query: str) -> dict:
    return _json(models.listing(Api.ANTHROPIC, table, query))


def test_anthropic_paging_walks_forward_and_back(table):
    first = _page(table, "limit=2")
    assert [m["id"] for m in first["data"]] == NAMES[:2]
    assert first["has_more"] and (first["first_id"], first["last_id"]) == (NAMES[0], NAMES[1])
    second = _page(table, f"limit=2&after_id={first['last_id']}")
    assert [m["id"] for m in second["data"]] == NAMES[2:4] and second["has_more"]
    last = _page(table, f"limit=2&after_id={second['last_id']}")
    assert [m["id"] for m in last["data"]] == NAMES[4:] and not last["has_more"]
    back = _page(table, f"limit=2&before_id={last['first_id']}")
    assert [m["id"] for m in back["data"]] == NAMES[2:4] and back["has_more"]
    assert not _page(table, f"limit=5&before_id={NAMES[2]}")["has_more"]


def test_an_empty_page_has_null_cursors(table):
    body = _page(table, f"after_id={NAMES[-1]}")
    assert body == {"data": [], "has_more": False, "first_id": None, "last_id": None}


@pytest.mark.parametrize(
    "query, words",
    [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("after_id=nope", "after_id"),
        ("before_id=nope", "before_id"),
        ("after_id=o3&before_id=o3", "together"),
    ],
)
def test_bad_paging_parameters_are_a_400_naming_them(table, query, words):
    answer = models.listing(Api.ANTHROPIC, table, query)
    assert answer.status == 400 and words in answer.message


@given(limit=st.integers(1, 7), start=st.integers(0, len(NAMES) - 1))
def test_pages_never_skip_or_repeat_a_model(limit, start):
    table = compile_policy(load_policy(POLICY).to_proto("v1"), environ={})
    query = f"limit={limit}" + (f"&after_id={NAMES[start - 1]}" if start else "")
    seen: list[str] = []
    while True:
        body = _json(models.listing(Api.ANTHROPIC, table, query))
        seen += [m["id"] for m in body["data"]]
        if not body["has_more"]:
            break
        query = f"limit={limit}&after_id={body['last_id']}"
    assert seen == NAMES[start:]
