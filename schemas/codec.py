"""The Avro codec of message values in both framings: Confluent's wire format with a registry, else
plain Avro with the schema name and version in headers (older writers read from `history/`).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, TypeVar

import fastavro

from opsinfra.errors import DecodeError, SchemaError
from schemas.records import Record

R = TypeVar("R", bound=Record)
Headers = list[tuple[str, bytes]]
RawHeaders = Sequence[tuple[str, bytes | None]]  # as a consumer hands them over: values may be None

SCHEMA_HEADER = "ops.schema"
VERSION_HEADER = "ops.schema.version"
CONFLUENT_MAGIC = 0


def header_pairs(raw: Any) -> RawHeaders:
    """A message's headers as (name, value) pairs, whichever shape the client handed them over in
    (a list, a tuple, a mapping or None). Pairs come back as they are, not copied: the features
    agent calls this for every bar."""
    if not raw:
        return ()
    if isinstance(raw, Mapping):
        return list(raw.items())
    pairs: RawHeaders = raw
    return pairs


@dataclass(frozen=True, slots=True)
class AvroSchema:
    """One version of one record schema."""

    name: str  # the file stem: "bar", "features", ...
    full_name: str  # the Avro full name: "ops.pipeline.Bar"
    version: int
    text: str
    parsed: Any

    @classmethod
    def from_text(cls, name: str, text: str) -> AvroSchema:
        raw = json.loads(text)
        try:
            parsed = fastavro.parse_schema(raw)
        except Exception as exc:  # fastavro raises several unrelated types here
            raise SchemaError(f"schema {name}: {exc}") from exc
        full = f"{raw.get('namespace', '')}.{raw['name']}".lstrip(".")
        return cls(name, full, int(raw.get("ops.version", 1)), text, parsed)


class SchemaSet:
    """The current schema of every record, plus every released version kept in `history/`."""

    def __init__(self, current: dict[str, AvroSchema], history: Sequence[AvroSchema] = ()):
        self.current = current
        self.history = tuple(history)  # every released version, the current ones included
        self._versions = {(s.name, s.version): s for s in history}
        self._versions.update({(s.name, s.version): s for s in current.values()})

    @classmethod
    def load(cls, directory: Path | None = None) -> SchemaSet:
        base: Any = directory if directory is not None else resources.files("schemas")
        current = {}
        for entry in base.iterdir():
            if entry.name.endswith(".avsc"):
                name = entry.name[: -len(".avsc")]
                current[name] = AvroSchema.from_text(name, entry.read_text("utf-8"))
        history = []
        hist = base / "history"
        if hist.is_dir():
            for entry in hist.iterdir():
                if entry.name.endswith(".avsc"):
                    name = entry.name.split(".", 1)[0]  # bar.v1.avsc -> bar
                    history.append(AvroSchema.from_text(name, entry.read_text("utf-8")))
        return cls(current, history)

    def get(self, name: str, version: int | None = None) -> AvroSchema:
        try:
            if version is None:
                return self.current[name]
            return self._versions[(name, version)]
        except KeyError:
            raise SchemaError(f"no schema {name!r} version {version}") from None

    def versions(self, name: str) -> list[AvroSchema]:
        return sorted((s for (n, _), s in self._versions.items() if n == name), key=lambda s: s.version)


class Codec(Protocol):
    """Encodes records to message values (+ headers) and back."""

    def encode(self, topic: str, record: Record) -> tuple[bytes, Headers]: ...

    def decode_dict(
        self,
        record_type: type[Record],
        value: bytes | None,
        headers: Sequence[tuple[str, bytes | None]] | None,
        *,
        topic: str,
        partition: int | None = None,
        offset: int | None = None,
    ) -> dict[str, Any]: ...


def decode(
    codec: Codec,
    record_type: type[R],
    value: bytes | None,
    headers: Sequence[tuple[str, bytes | None]] | None,
    *,
    topic: str,
    partition: int | None = None,
    offset: int | None = None,
) -> R:
    """Decode one message value into its record; any failure is a DecodeError with origin."""
    data = codec.decode_dict(record_type, value, headers, topic=topic, partition=partition, offset=offset)
    try:
        return record_type.from_avro(data)
    except (TypeError, ValueError, KeyError) as exc:
        raise DecodeError(f"record: {exc}", topic=topic, partition=partition, offset=offset) from exc


class HeaderCodec:
    """Plain Avro values; schema full name and version travel in headers."""

    def __init__(self, schemas: SchemaSet | None = None) -> None:
        self.schemas = schemas or SchemaSet.load()
        self._headers: dict[str, Headers] = {}

    def encode(self, topic: str, record: Record) -> tuple[bytes, Headers]:
        schema = self.schemas.get(record.SCHEMA)
        buf = io.BytesIO()
        try:
            fastavro.schemaless_writer(buf, schema.parsed, record.to_avro())
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            raise SchemaError(f"{schema.full_name} on {topic}: {exc}") from exc
        headers = self._headers.get(schema.name)
        if headers is None:
            headers = [
                (SCHEMA_HEADER, schema.full_name.encode()),
                (VERSION_HEADER, str(schema.version).encode()),
            ]
            self._headers[schema.name] = headers
        return buf.getvalue(), headers

    def decode_dict(
        self,
        record_type: type[Record],
        value: bytes | None,
        headers: Sequence[tuple[str, bytes | None]] | None,
        *,
        topic: str,
        partition: int | None = None,
        offset: int | None = None,
    ) -> dict[str, Any]:
        def fail(reason: str, exc: BaseException | None = None) -> DecodeError:
            err = DecodeError(reason, topic=topic, partition=partition, offset=offset)
            err.__cause__ = exc
            return err

        if value is None:
            raise fail("empty value (tombstone)")
        reader = self.schemas.get(record_type.SCHEMA)
        found = dict((k, v) for k, v in headers or () if k in (SCHEMA_HEADER, VERSION_HEADER))
        name, version = found.get(SCHEMA_HEADER), found.get(VERSION_HEADER)
        if name is None or version is None:
            hint = " (Confluent-framed? set SCHEMA_REGISTRY_URL)" if value[:1] == b"\0" else ""
            raise fail(f"missing {SCHEMA_HEADER}/{VERSION_HEADER} headers{hint}")
        if name.decode("utf-8", "replace") != reader.full_name:
            raise fail(f"schema {name.decode('utf-8', 'replace')} where {reader.full_name} expected")
        try:
            writer_version = int(version)
        except ValueError as exc:
            raise fail(f"bad schema version header {version!r}", exc) from exc
        # A newer writer than we know only appended fields: our schema reads its prefix.
        newer = writer_version > reader.version
        writer = reader if newer else self.schemas.get(reader.name, writer_version)
        buf = io.BytesIO(value)
        try:
            data = fastavro.schemaless_reader(buf, writer.parsed, reader.parsed)
        except Exception as exc:  # fastavro raises EOFError, ValueError, IndexError, ...
            raise fail(f"undecodable {reader.full_name} v{writer_version}: {exc!r}", exc) from exc
        if not newer and buf.tell() != len(value):
            raise fail(f"{len(value) - buf.tell()} trailing bytes after {reader.full_name}")
        return data  # type: ignore[return-value]


class RegistryCodec:
    """Confluent wire format, schemas registered under the topic's `<topic>-value` subject."""

    def __init__(
        self,
        url: str,
        schemas: SchemaSet | None = None,
        *,
        client: Any = None,
        **conf: Any,
    ) -> None:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        self.schemas = schemas or SchemaSet.load()
        self.client = client or SchemaRegistryClient.new_client({"url": url, **conf})
        self._serializers: dict[tuple[str, str], Any] = {}
        self._deserializers: dict[str, Any] = {}
        self._current: dict[tuple[int, str], bool] = {}

    def encode(self, topic: str, record: Record) -> tuple[bytes, Headers]:
        from confluent_kafka.schema_registry.avro import AvroSerializer
        from confluent_kafka.serialization import MessageField, SerializationContext

        key = (topic, record.SCHEMA)
        ser = self._serializers.get(key)
        if ser is None:
            text = self.schemas.get(record.SCHEMA).text
            ser = AvroSerializer(self.client, text, conf={"auto.register.schemas": True})
            self._serializers[key] = ser
        try:
            out = ser(record.to_avro(), SerializationContext(topic, MessageField.VALUE))
        except Exception as exc:  # SerializationError, SchemaRegistryError, fastavro errors
            raise SchemaError(f"{record.SCHEMA} on {topic}: {exc}") from exc
        return out, []

    def is_current(self, schema_id: int, record_type: type[Record]) -> bool:
        """Whether values framed with `schema_id` are written in the current schema of `record_type`
        (then a reader of that schema reads them as the deserializer does); False when unknown."""
        key = (schema_id, record_type.SCHEMA)
        known = self._current.get(key)
        if known is None:
            try:
                registered = json.loads(self.client.get_schema(schema_id).schema_str or "")
                known = fastavro.parse_schema(registered) == self.schemas.get(record_type.SCHEMA).parsed
            except Exception:  # noqa: BLE001 - unknown id, registry down: the deserializer decides
                known = False
            self._current[key] = known
        return known

    def decode_dict(
        self,
        record_type: type[Record],
        value: bytes | None,
        headers: Sequence[tuple[str, bytes | None]] | None,
        *,
        topic: str,
        partition: int | None = None,
        offset: int | None = None,
    ) -> dict[str, Any]:
        from confluent_kafka.schema_registry.avro import AvroDeserializer
        from confluent_kafka.serialization import MessageField, SerializationContext

        if value is None or len(value) < 5 or value[0] != CONFLUENT_MAGIC:
            raise DecodeError(
                "not Confluent-framed Avro (no magic byte)",
                topic=topic,
                partition=partition,
                offset=offset,
            )
        de = self._deserializers.get(record_type.SCHEMA)
        if de is None:
            de = AvroDeserializer(self.client, self.schemas.get(record_type.SCHEMA).text)
            self._deserializers[record_type.SCHEMA] = de
        try:
            data = de(value, SerializationContext(topic, MessageField.VALUE))
        except Exception as exc:
            raise DecodeError(
                f"undecodable {record_type.SCHEMA}: {exc!r}",
                topic=topic,
                partition=partition,
                offset=offset,
            ) from exc
        if not isinstance(data, dict):
            raise DecodeError(
                "decoded value is not a record", topic=topic, partition=partition, offset=offset
            )
        return data


def make_codec(schema_registry_url: str | None, **conf: Any) -> Codec:
    """The registry codec when a registry URL is configured, else the header codec."""
    if schema_registry_url:
        return RegistryCodec(schema_registry_url, **conf)
    return HeaderCodec()
