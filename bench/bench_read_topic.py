"""`read_topic` into a DataFrame, records/s, for bars and features on an embedded broker (default
1,000,000 of each), against the same call of the code before the changes, same run, same topics:
a baseline tree (`git worktree add /tmp/base-x HEAD`, or a git ref archived here). Each read runs
in its own process, new and old back to back; the frames must hash alike. Also librdkafka alone.

    python bench/bench_read_topic.py [--records 1000000] [--symbols 50] [--runs 2]
        [--baseline-tree /tmp/base-x | --baseline-ref HEAD]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_backtest_e2e import _columns, bar_table, consume_ceiling, extract_ref  # noqa: E402

# run in a child process with the tree under test first on the path; prints one JSON line
CHILD = """
import json, sys, time
import pandas as pd, pyarrow, pyarrow.compute  # imported before the clock starts, in both trees
from opsinfra.settings import Settings
from pipeline import notebook
settings = Settings(_env_file=None, kafka_bootstrap_servers=sys.argv[1], pipeline_topic_prefix=sys.argv[2])
wall, cpu = time.perf_counter(), time.process_time()
df = notebook.read_topic(sys.argv[3], settings=settings)
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
digest = int(pd.util.hash_pandas_object(df, index=False).sum())
print(json.dumps({"rows": len(df), "wall": wall, "cpu": cpu, "digest": digest,
                  "dtypes": [str(t) for t in df.dtypes], "undecodable": df.attrs["undecodable"]}))
"""


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


def read_in(tree: Path, bootstrap: str, prefix: str, topic: str) -> dict[str, Any]:
    """`read_topic(topic)` of the code in `tree`, in a fresh process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "PIPELINE_", "SCHEMA_"))}
    env["PYTHONPATH"] = str(tree)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, bootstrap, prefix, topic],
        cwd=tree, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"read_topic in {tree} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def line(what: str, run: dict[str, Any]) -> str:
    return (f"{what}: {run['rows']:,} rows in {run['wall']:.2f} s (CPU {run['cpu']:.2f} s) = "
            f"{run['rows'] / run['wall']:,.0f} records/s")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--symbols", type=int, default=50)
    ap.add_argument("--runs", type=int, default=2, help="new/old pairs per topic")
    ap.add_argument("--baseline-tree", type=Path, help="a checkout of the code before the changes")
    ap.add_argument("--baseline-ref", default="HEAD", help="else this git ref, archived into a temp dir")
    args = ap.parse_args()

    from confluent_kafka.admin import AdminClient

    from opsinfra.embedded import TansuBroker
    from opsinfra.kafka_admin import create_topics
    from opsinfra.settings import Settings
    from schemas.topics import ALL_TOPICS, BARS, FEATURES

    bars = _columns(bar_table(args.records, args.symbols)).bars()
    with tempfile.TemporaryDirectory() as tmp:
        base = args.baseline_tree or extract_ref(args.baseline_ref, Path(tmp))
        print(f"baseline: {base}")
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
                for _ in range(args.runs):
                    new = read_in(ROOT, broker.bootstrap, prefix, spec.name)
                    old = read_in(base, broker.bootstrap, prefix, spec.name)
                    same = {k: new[k] == old[k] for k in ("rows", "digest", "dtypes", "undecodable")}
                    print(f"  {line('read_topic', new)}")
                    print(f"  {line('same-run baseline, the old read_topic', old)}; ratio "
                          f"{old['wall'] / new['wall']:.1f}x (CPU {old['cpu'] / new['cpu']:.1f}x); "
                          f"frames equal: {all(same.values()) or same}")  # fmt: skip
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
