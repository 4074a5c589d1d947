"""Responses API stream events checked against the official openai SDK's model of each event type."""

from __future__ import annotations

import typing
from typing import Any

from openai.types.responses import ResponseStreamEvent
from pydantic import BaseModel

# The SDK's event union, by each member's ``type`` literal: validating against the one model the
# event names gives a readable error, where the whole union lists every member's complaint.
EVENT_MODELS: dict[str, type[BaseModel]] = {
    model.model_fields["type"].annotation.__args__[0]: model
    for model in typing.get_args(typing.get_args(ResponseStreamEvent)[0])
}


def validate_event(data: dict[str, Any]) -> BaseModel:
    return EVENT_MODELS[data["type"]].model_validate(data)
