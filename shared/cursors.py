"""Opaque page cursors: the position of a page's last item as URL-safe base64 of its JSON. A cursor this API did
not make is a 400 naming the field."""

from __future__ import annotations

import base64
import binascii
from typing import Any, TypeVar

import msgspec

from shared.errors import InputError

T = TypeVar("T")


def encode_cursor(position: Any) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(position)).decode()


def decode_cursor(raw: str, position_type: type[T], field: str = "query.cursor") -> T:
    try:
        return msgspec.json.decode(base64.urlsafe_b64decode(raw.encode()), type=position_type)
    except (ValueError, binascii.Error, msgspec.DecodeError, msgspec.ValidationError):
        raise InputError.for_field(field, "not a cursor returned by this API") from None
