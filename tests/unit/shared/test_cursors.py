import pytest

from shared.cursors import decode_cursor, encode_cursor
from shared.errors import InputError


def test_a_cursor_round_trips_its_position():
    assert decode_cursor(encode_cursor(("name", "id-1")), tuple[str, str]) == ("name", "id-1")
    assert decode_cursor(encode_cursor(42), int) == 42


@pytest.mark.parametrize("raw", ["not base64!", encode_cursor("text"), encode_cursor([1])])
def test_a_cursor_not_made_here_names_the_field(raw):
    with pytest.raises(InputError) as raised:
        decode_cursor(raw, int, "query.after")
    assert raised.value.errors[0].field == "query.after"
