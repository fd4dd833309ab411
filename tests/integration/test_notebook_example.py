"""examples/notebook.ipynb runs top to bottom against the fixtures' broker (nbclient)."""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from opsinfra.settings import Settings
from schemas.codec import HeaderCodec
from schemas.records import Bar, Features
from schemas.topic_io import RecordProducer
from schemas.topics import BARS, FEATURES
from trading.features import FeatureEngine

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_notebook_reads_bars_and_features_and_plots(
    provisioned: Settings, kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = FeatureEngine("AAPL")
    n = 0
    with (
        open(ROOT / "data" / "sample_session" / "bars.csv") as fh,
        RecordProducer(provisioned, kafka_bootstrap, HeaderCodec()) as producer,
    ):
        for row in csv.DictReader(fh):
            if row["symbol"] != "AAPL":
                continue
            bar = Bar(
                "AAPL",
                datetime.fromisoformat(row["ts"]),
                float(row["open"]),
                float(row["high"]),
                float(row["low"]),
                float(row["close"]),
                int(row["volume"]),
                None,
                None,
                "replay",
                int(row["revision"]),
            )
            producer.send(BARS, bar)
            values = engine.update(bar.ts, bar.close, bar.volume, bar.revision)
            if values is not None:
                producer.send(FEATURES, Features(**{f: getattr(values, f) for f in Features.field_names()}))
            n += 1
    for key in ("KAFKA_BOOTSTRAP_SERVERS", "PIPELINE_TOPIC_PREFIX", "DATABASE_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("PIPELINE_TOPIC_PREFIX", provisioned.pipeline_topic_prefix)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")  # the kernel's own deprecation noise is not ours

    nb = nbformat.read(ROOT / "examples" / "notebook.ipynb", as_version=4)
    NotebookClient(
        nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    printed = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert f"AAPL: {n - 1} bars, {n - 1} feature rows" in printed  # one updated bar replaces its minute
    assert (tmp_path / "AAPL_features.png").stat().st_size > 10_000
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"
    ]
    assert errors == []
