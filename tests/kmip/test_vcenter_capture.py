"""The captured vCenter 7.0.3 requests decode and re-encode byte for byte.

The capture lives beside the repository in ``../shared/interop`` (the project's shared
folder); CI clones the repository with ``shared/`` beside it, so the file is always there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vmcrypt.kmip.tags import Tag
from vmcrypt.kmip.ttlv import Item, decode, encode

CAPTURE = (
    Path(__file__).resolve().parents[3] / "shared" / "interop"
    / "vcenter-7.0.3-kmip-1.1-requests.json"
)


def _requests() -> list[dict[str, Any]]:
    if not CAPTURE.exists():
        pytest.fail(f"{CAPTURE} is missing: the shared folder must sit beside the repository")
    data: dict[str, Any] = json.loads(CAPTURE.read_text())
    requests: list[dict[str, Any]] = data["requests"]
    return requests


def _walk(item: Item) -> list[Item]:
    out = [item]
    if isinstance(item.value, tuple):
        for child in item.value:
            out.extend(_walk(child))
    return out


@pytest.mark.parametrize("request_", _requests(), ids=lambda r: r["name"])
def test_capture_round_trips(request_: dict[str, Any]) -> None:
    raw = bytes.fromhex(request_["ttlv_hex"])
    message = decode(raw)
    assert message.tag == Tag.REQUEST_MESSAGE
    assert encode(message) == raw
    tags = {item.tag for item in _walk(message)}
    assert Tag.REQUEST_HEADER in tags and Tag.BATCH_ITEM in tags and Tag.OPERATION in tags
