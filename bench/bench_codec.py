"""The codec's fast paths against fastavro, per record: the features agent's writer and the sink's
compiled readers. Prints microseconds per record, best of 5."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro

from schemas.avro_fast import RecordWriter, compile_reader
from schemas.codec import SchemaSet
from schemas.records import Bar, Features

N = 50_000
T0 = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)


def best_us(fn: Callable[[], object], n: int) -> float:
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t) / n * 1e6)
    return min(runs)


def main() -> None:
    schemas = SchemaSet.load()
    feats = [
        Features("AAPL", T0 + timedelta(minutes=i), 190.0 + i * 0.01, 190.1, 189.9, 12_000 + i, 11_500.5,
                 1.04, False, 55.2, 0.12, 0.1, 0.02, 191.0, 190.0, 189.0, 60 + i)
        for i in range(N)
    ]
    bars = [
        Bar("AAPL", T0 + timedelta(minutes=i), 190.0, 190.5, 189.5, 190.2, 12_000, 80, 190.1, "live", 0)
        for i in range(N)
    ]
    print(f"{'record':<10}{'path':<34}{'us/record':>10}")
    for name, records in (("features", feats), ("bar", bars)):
        for path, us in measure(schemas, name, records):
            print(f"{name:<10}{path:<34}{us:>10.2f}")


def measure(schemas: SchemaSet, name: str, records: list[Any]) -> list[tuple[str, float]]:
    schema = schemas.get(name)
    parsed, raw = schema.parsed, json.loads(schema.text)

    def fastavro_write() -> list[bytes]:
        out = []
        for r in records:
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, parsed, r.to_avro())
            out.append(buf.getvalue())
        return out

    encoded = fastavro_write()
    rows = [("write: fastavro (to_avro + writer)", best_us(fastavro_write, N))]
    writer = RecordWriter.for_schema(raw)
    if writer is not None:
        assert [writer.encode(r) for r in records[:100]] == encoded[:100]  # the same bytes
        rows.append(("write: RecordWriter", best_us(lambda: [writer.encode(r) for r in records], N)))
    rows.append(("read: fastavro", best_us(
        lambda: [fastavro.schemaless_reader(io.BytesIO(b), parsed, parsed) for b in encoded], N)))
    read = compile_reader(raw)
    rows.append(("read: compiled reader", best_us(lambda: [read(b) for b in encoded], N)))
    return rows

if __name__ == "__main__":
    main()
