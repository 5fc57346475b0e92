"""The hash chain, masking and record building, without I/O."""

from __future__ import annotations

import msgspec
import pytest

from services.audit.model import ChainVerifier, chain_hash, is_secret_name, link, mask_secrets, record_from_event
from tests.helpers import sample_event


def chain(n: int):
    return link([record_from_event(sample_event(i)) for i in range(n)], 0, b"")


def verify(records, head=None):
    verifier = ChainVerifier(0, b"")
    for record in records:
        if not verifier.feed(record):
            break
    last = head or (records[-1].seq, records[-1].hash)
    return verifier.finish(*last)


def test_linked_chain_verifies():
    records = chain(5)
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert records[1].hash == chain_hash(records[0].hash, msgspec.structs.replace(records[1], hash=b""))
    result = verify(records)
    assert result.ok and result.checked == 5 and result.first_error is None


def test_edited_record_breaks_its_link():
    records = chain(5)
    records[2] = msgspec.structs.replace(records[2], data={"n": 999})
    result = verify(records)
    assert not result.ok
    assert result.first_error.seq == 3


def test_deleted_record_is_reported_missing():
    records = chain(5)
    del records[1]
    result = verify(records, head=(5, chain(5)[-1].hash))
    assert result.first_error.seq == 2
    assert "missing" in result.first_error.reason


def test_reordered_records_are_detected():
    records = chain(5)
    a, b = records[1], records[2]
    records[1] = msgspec.structs.replace(b, seq=2)
    records[2] = msgspec.structs.replace(a, seq=3)
    result = verify(records)
    assert result.first_error.seq == 2


def test_deleted_newest_record_is_detected_by_the_head():
    records = chain(5)
    head = (records[-1].seq, records[-1].hash)
    result = verify(records[:-1], head=head)
    assert not result.ok and "head" in result.first_error.reason


@pytest.mark.parametrize(
    "name", ["password", "apiKey", "api_key", "client_secret", "Authorization", "x-auth-token", "privateKey", "key"]
)
def test_secret_names_are_recognised(name):
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["owner", "lifecycle", "monkey", "tokenizer_name", "description", "keyboard"])
def test_ordinary_names_are_not_masked(name):
    assert not is_secret_name(name)


def test_masking_walks_nested_documents_and_lists():
    data = {"user": {"name": "ana", "password": "hunter2"}, "items": [{"token": "t"}, {"ok": 1}], "n": "a\x00b"}
    assert mask_secrets(data) == {
        "user": {"name": "ana", "password": "***"},
        "items": [{"token": "***"}, {"ok": 1}],
        "n": "a\ufffdb",
    }


def test_record_from_event_masks_and_keeps_trace_id():
    event = msgspec.structs.replace(
        sample_event(1, secret="s3cret"),
        trace=msgspec.convert(
            {"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"}, type=type(sample_event().trace)
        ),
    )
    record = record_from_event(event)
    assert record.data["secret"] == "***"
    assert record.trace_id == "ab" * 16
    assert record.time.utcoffset().total_seconds() == 0
