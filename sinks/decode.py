"""The sink's decoding hot path: header-framed messages at the current schema version are read
by a compiled reader (sinks.avro); anything else, or anything odd, goes through the codec.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from schemas.codec import SCHEMA_HEADER, VERSION_HEADER, Codec, HeaderCodec
from schemas.records import Record
from sinks.avro import Unsupported, compile_reader

Decoder = Callable[[Any], dict[str, Any]]  # a confluent-kafka Message -> the record's fields


def decoder(codec: Codec, record: type[Record], topic: str) -> Decoder:
    """Decodes messages of one topic; raises the codec's DecodeError for anything undecodable."""
    decode_dict = codec.decode_dict

    def through_codec(msg: Any) -> dict[str, Any]:
        return decode_dict(
            record, msg.value(), msg.headers(), topic=topic, partition=msg.partition(), offset=msg.offset()
        )

    if not isinstance(codec, HeaderCodec):
        return through_codec
    schema = codec.schemas.get(record.SCHEMA)
    try:
        read = compile_reader(json.loads(schema.text))
    except Unsupported:
        return through_codec
    # exactly the headers HeaderCodec.encode writes for the current version of this schema
    expected = [(SCHEMA_HEADER, schema.full_name.encode()), (VERSION_HEADER, str(schema.version).encode())]

    def fast(msg: Any) -> dict[str, Any]:
        value = msg.value()
        if value is not None and msg.headers() == expected:
            try:
                return read(value)
            except Exception:  # malformed in some way: the codec decides, and words the error
                return through_codec(msg)
        return through_codec(msg)

    return fast
