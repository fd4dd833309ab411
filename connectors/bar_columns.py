"""Bars as numpy columns: the column-wise form of a bar file or a topic read back, ordered and
selected column-wise, and made Bar records once, at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import repeat
from typing import Any

from schemas.records import Bar
from trading.execution import new_record

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


@dataclass
class BarColumns:
    """Bars as numpy columns: symbols as codes into `symbols`, times in epoch microseconds (UTC),
    `seq` the position in the input (file row, message) that keeps ties stable."""

    symbol: Any
    symbols: list[str]
    ts: Any
    open: Any
    high: Any
    low: Any
    close: Any
    volume: Any
    trade_count: Any
    trade_count_null: Any
    vwap: Any
    vwap_null: Any
    revision: Any
    seq: Any

    def __len__(self) -> int:
        return len(self.ts)

    def take(self, rows: Any) -> BarColumns:
        def part(name: str) -> Any:
            return getattr(self, name) if name == "symbols" else getattr(self, name)[rows]

        return BarColumns(**{f.name: part(f.name) for f in dataclasses.fields(self)})

    @classmethod
    def from_bars(cls, bars: Sequence[Bar], seq: Sequence[int]) -> BarColumns:
        import numpy as np

        symbols = sorted({b.symbol for b in bars})
        code = {s: i for i, s in enumerate(symbols)}

        def col(name: str, dtype: Any) -> Any:
            data = [0 if (v := getattr(b, name)) is None else v for b in bars]
            try:
                return np.array(data, dtype)
            except OverflowError:  # a count beyond int64, which Python took: kept as is
                return np.array(data, object)

        return cls(
            symbol=np.array([code[b.symbol] for b in bars], np.int32), symbols=symbols,
            ts=np.array([(b.ts - _EPOCH) // _US for b in bars], np.int64),
            open=col("open", float), high=col("high", float), low=col("low", float),
            close=col("close", float),
            volume=col("volume", np.int64), trade_count=col("trade_count", np.int64),
            trade_count_null=np.array([b.trade_count is None for b in bars], bool),
            vwap=col("vwap", float), vwap_null=np.array([b.vwap is None for b in bars], bool),
            revision=col("revision", np.int64), seq=np.array(seq, np.int64),
        )  # fmt: skip

    @classmethod
    def from_decoded(cls, columns: Mapping[str, Any], seq: Any) -> BarColumns:
        """Bar records decoded column-wise (schemas.column_decoder.decode_columns), read back to be
        replayed: their source becomes replay, as `prepare_bars` does."""
        import numpy as np

        def nulls(name: str) -> Any:
            c = columns[name]
            return np.zeros(len(c.values), bool) if c.nulls is None else c.nulls

        v = {name: c.values for name, c in columns.items()}
        return cls(
            symbol=v["symbol"], symbols=list(columns["symbol"].labels), ts=v["ts"], open=v["open"],
            high=v["high"], low=v["low"], close=v["close"], volume=v["volume"], trade_count=v["trade_count"],
            trade_count_null=nulls("trade_count"), vwap=v["vwap"], vwap_null=nulls("vwap"),
            revision=v["revision"], seq=np.asarray(seq, np.int64),
        )  # fmt: skip

    @classmethod
    def concat(cls, parts: Sequence[BarColumns]) -> BarColumns:
        """One set of columns (symbol codes remapped onto one label list)."""
        import numpy as np

        symbols = sorted({s for p in parts for s in p.symbols})
        code = {s: i for i, s in enumerate(symbols)}
        remapped = [np.array([code[s] for s in p.symbols], np.int32)[p.symbol] if len(p) else p.symbol
                    for p in parts]
        fields = {f.name: np.concatenate([getattr(p, f.name) for p in parts])
                  for f in dataclasses.fields(cls) if f.name not in ("symbol", "symbols")}
        return cls(symbol=np.concatenate(remapped).astype(np.int32), symbols=symbols, **fields)

    def ordered(self) -> tuple[BarColumns, int]:
        """In replay order ((ts, revision), stable), exact repeats dropped: (columns, repeats)."""
        import numpy as np

        ts, rev, seq = self.ts, self.revision, self.seq
        dts, drev = np.diff(ts), np.diff(rev)
        if not ((dts > 0) | (dts == 0) & ((drev > 0) | (drev == 0) & (np.diff(seq) > 0))).all():
            return self.take(np.lexsort((seq, rev, ts))).ordered()
        # a repeat has the (ts, revision, symbol) of an earlier row: only those are compared in full
        group = np.concatenate([[0], np.cumsum((dts != 0) | (drev != 0))])
        pairs = group * max(len(self.symbols), 1) + self.symbol
        flat = np.sort(pairs)
        twice = flat[1:][flat[1:] == flat[:-1]]
        if not len(twice):
            return self, 0
        seen: set[tuple[Any, ...]] = set()
        drop = []
        for i in np.flatnonzero(np.isin(pairs, twice)).tolist():
            key = (int(pairs[i]), float(self.open[i]), float(self.high[i]), float(self.low[i]),
                   float(self.close[i]), int(self.volume[i]),
                   None if self.trade_count_null[i] else int(self.trade_count[i]),
                   None if self.vwap_null[i] else float(self.vwap[i]))  # fmt: skip
            if key in seen:
                drop.append(i)
            else:
                seen.add(key)
        keep = np.ones(len(self), bool)
        keep[drop] = False
        return self.take(keep), len(drop)

    def select(
        self, start: datetime | None, end: datetime | None, symbols: Collection[str] | None
    ) -> BarColumns:
        """The bars with start <= ts < end of the given symbols (None: no bound)."""
        import numpy as np

        keep = np.ones(len(self), bool)
        if start is not None:
            keep &= self.ts >= (start - _EPOCH) // _US
        if end is not None:
            keep &= self.ts < (end - _EPOCH) // _US
        if symbols is not None:
            keep &= np.isin(self.symbol, [i for i, s in enumerate(self.symbols) if s in symbols])
        return self if keep.all() else self.take(keep)

    def rows(self) -> Iterator[tuple[datetime, str, float, int, int]]:
        """(ts, symbol, close, volume, revision) of each bar, what the backtester reads of one (see
        Backtester.run_rows): no Bar record made; one datetime per distinct minute, shared."""
        import numpy as np

        if not len(self):
            return iter(())
        stamps, where = np.unique(self.ts, return_inverse=True)
        times = np.array([_EPOCH + timedelta(microseconds=us) for us in stamps.tolist()], object)
        names = np.array(self.symbols, object)
        return zip(times[where].tolist(), names[self.symbol].tolist(), self.close.tolist(),
                   self.volume.tolist(), self.revision.tolist(), strict=True)

    def first_ts(self) -> datetime | None:
        return _EPOCH + timedelta(microseconds=int(self.ts.min())) if len(self) else None

    def bars(self, source: str = "replay") -> list[Bar]:
        """Bar records, built once, column-wise: one datetime per distinct minute, shared."""
        import numpy as np

        if not len(self):
            return []
        stamps, where = np.unique(self.ts, return_inverse=True)
        times = np.array([_EPOCH + timedelta(microseconds=us) for us in stamps.tolist()] + [None], object)
        names = np.array([*self.symbols, None], object)
        with gc_paused():
            return list(map(
                new_record, repeat(Bar), names[self.symbol].tolist(), times[where].tolist(),
                self.open.tolist(), self.high.tolist(), self.low.tolist(), self.close.tolist(),
                self.volume.tolist(), _nullable(self.trade_count, self.trade_count_null),
                _nullable(self.vwap, self.vwap_null), repeat(source), self.revision.tolist(),
            ))  # fmt: skip


def _nullable(values: Any, nulls: Any) -> Any:
    if not nulls.any():
        return values.tolist()
    if nulls.all():
        return repeat(None)
    out = values.astype(object)
    out[nulls] = None
    return out.tolist()


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic GC off while a million records are made or read (each full collection would walk
    every live one again; what they make is acyclic)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
