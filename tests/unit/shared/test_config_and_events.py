"""Settings parsing and the event envelope."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest

from shared.config import BaseSettings, ConfigError, load_settings
from shared.errors import InputError, input_error_from_validation
from shared.events import Actor, ResourceRef, decode_event, diff_fields, encode_event, new_event

REQUIRED = {"IDP_DATABASE_URL": "postgresql://x@127.0.0.1:1/db", "IDP_NATS_URL": "nats://127.0.0.1:1"}


def test_environment_strings_become_typed_settings():
    settings = load_settings(BaseSettings, {**REQUIRED, "IDP_HTTP_PORT": "9001", "IDP_STREAM_REPLICAS": "3"})
    assert settings.http_port == 9001 and settings.stream_replicas == 3
    assert settings.dev_token is None


def test_a_bad_value_is_one_line_naming_the_variable():
    with pytest.raises(ConfigError, match=r"^IDP_HTTP_PORT: Expected `int`"):
        load_settings(BaseSettings, {**REQUIRED, "IDP_HTTP_PORT": "eighty"})


def test_a_missing_value_names_the_variable():
    with pytest.raises(ConfigError, match=r"^IDP_NATS_URL is required$"):
        load_settings(BaseSettings, {"IDP_DATABASE_URL": "postgresql://x/db"})


def test_dev_token_is_refused_in_production():
    env = {**REQUIRED, "IDP_DEV_TOKEN": "a-long-enough-dev-token", "IDP_ENVIRONMENT": "production"}
    with pytest.raises(ConfigError, match="IDP_DEV_TOKEN must not be set"):
        load_settings(BaseSettings, env)


def test_yaml_file_is_overlaid_by_environment(tmp_path):
    path = tmp_path / "idp.yaml"
    path.write_text("http_port: 7000\nlog_level: DEBUG\n")
    settings = load_settings(BaseSettings, {**REQUIRED, "IDP_CONFIG": str(path), "IDP_HTTP_PORT": "7001"})
    assert (settings.http_port, settings.log_level) == (7001, "DEBUG")


def test_unknown_yaml_key_is_rejected(tmp_path):
    path = tmp_path / "idp.yaml"
    path.write_text("htp_port: 7000\n")
    with pytest.raises(ConfigError, match="htp_port"):
        load_settings(BaseSettings, {**REQUIRED, "IDP_CONFIG": str(path)})


def test_event_round_trips_and_ids_are_time_ordered_uuid7():
    first = new_event("t.x.created", source="t", actor=Actor("user", "u"), resource=ResourceRef("x", "1"))
    second = new_event("t.x.created", source="t", actor=Actor("user", "u"), resource=ResourceRef("x", "2"))
    assert first.id[14] == "7" and first.id < second.id
    assert decode_event(encode_event(first)) == first
    assert first.subject == "idp.evt.t.x.created"


def test_event_time_must_carry_an_offset():
    raw = msgspec.json.decode(
        encode_event(new_event("a.b.c", source="t", actor=Actor("system", "s"), resource=ResourceRef("x", "1")))
    )
    raw["time"] = dt.datetime(2026, 1, 1).isoformat()
    with pytest.raises(msgspec.ValidationError, match="time"):
        decode_event(msgspec.json.encode(raw))


def test_diff_fields_reports_changed_leaves_only():
    before = {"metadata": {"name": "a", "annotations": {"x": "1", "y": "2"}}, "spec": {"owner": "g"}}
    after = {"metadata": {"name": "a", "annotations": {"x": "1", "y": "3"}}, "spec": {"owner": "g", "tier": 1}}
    assert diff_fields(before, after) == {
        "metadata.annotations.y": {"before": "2", "after": "3"},
        "spec.tier": {"before": None, "after": 1},
    }


def test_validation_error_names_the_json_path():
    class Body(msgspec.Struct):
        limit: int

    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.json.decode(b'{"limit": "x"}', type=Body)
    error = input_error_from_validation(info.value)
    assert isinstance(error, InputError)
    assert error.errors[0].field == "$.limit"
