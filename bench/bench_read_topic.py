"""`read_topic` into a DataFrame, records/s, for bars and features on an embedded broker (default
1,000,000 of each), with same-run baselines: librdkafka alone reading the topic (no decoding) and
the record-by-record path (decode, dict, DataFrame of dicts; what read_topic did before).

    python bench/bench_read_topic.py [--records 1000000] [--symbols 50]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_backtest_e2e import _columns, bar_table, consume_ceiling  # noqa: E402


def produce(settings: Any, bootstrap: str, prefix: str, records: list[Any], topic: str) -> None:
    from schemas.avro_fast import RecordWriter
    from schemas.codec import HeaderCodec
    from schemas.topic_io import RecordProducer

    codec = HeaderCodec()
    writer = RecordWriter.build(codec, prefix + topic, records[:3])
    assert writer is not None
    with RecordProducer(settings, bootstrap, codec) as producer:
        for r in records:
            producer.send_raw(prefix + topic, r.key().encode(), writer.encode(r), writer.headers)


def features_of(bars: list[Any]) -> list[Any]:
    from trading.features import FeatureEngine

    engines: dict[str, FeatureEngine] = {}
    out = []
    for b in bars:
        engine = engines.get(b.symbol) or engines.setdefault(b.symbol, FeatureEngine(b.symbol))
        f = engine.update(b.ts, b.close, b.volume, b.revision)
        if f is not None:
            out.append(f)
    return out


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--symbols", type=int, default=50)
    args = ap.parse_args()

    from confluent_kafka.admin import AdminClient

    from opsinfra.embedded import TansuBroker
    from opsinfra.kafka_admin import create_topics
    from opsinfra.settings import Settings
    from pipeline import notebook
    from schemas.topics import ALL_TOPICS, BARS, FEATURES

    bars = _columns(bar_table(args.records, args.symbols)).bars()
    with tempfile.TemporaryDirectory() as tmp:
        broker = TansuBroker(Path(tmp))
        broker.start()
        try:
            prefix = "bench."
            admin = AdminClient({"bootstrap.servers": broker.bootstrap})
            create_topics(admin, [replace(s, name=prefix + s.name) for s in ALL_TOPICS])
            settings = Settings(  # type: ignore[call-arg]
                _env_file=None, kafka_bootstrap_servers=broker.bootstrap, pipeline_topic_prefix=prefix
            )
            for spec, records in ((BARS, bars), (FEATURES, features_of(bars))):
                t0 = time.perf_counter()
                produce(settings, broker.bootstrap, prefix, records, spec.name)
                print(f"{spec.name}: produced {len(records):,} records in {time.perf_counter() - t0:.1f} s")
                ceiling = consume_ceiling(broker.bootstrap, prefix + spec.name)
                print(f"  same-run baseline, librdkafka alone (no decoding): {ceiling:,.0f} messages/s")
                df, wall, cpu = timed(lambda name=spec.name: notebook.read_topic(name, settings=settings))
                print(f"  read_topic: {len(df):,} rows in {wall:.2f} s (CPU {cpu:.2f} s) = "
                      f"{len(df) / wall:,.0f} records/s")
                real = notebook.decode_columns

                def row_by_row(*a: Any, **k: Any) -> Any:
                    raise notebook.Unsupported("the record-by-record path")

                notebook.decode_columns = row_by_row  # type: ignore[assignment]
                try:
                    base, bwall, bcpu = timed(
                        lambda name=spec.name: notebook.read_topic(name, settings=settings)
                    )
                finally:
                    notebook.decode_columns = real  # type: ignore[assignment]
                print(f"  same-run baseline, record by record: {len(base):,} rows in {bwall:.2f} s "
                      f"(CPU {bcpu:.2f} s) = {len(base) / bwall:,.0f} records/s; "
                      f"ratio {bwall / wall:.1f}x (CPU {bcpu / cpu:.1f}x)")
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
