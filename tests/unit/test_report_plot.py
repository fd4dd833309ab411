"""The report's figures plot a few thousand points of a long equity curve: each bucket's first,
last, lowest and highest point, so the line keeps the whole curve's shape and extremes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pipeline.report_html import envelope

values = st.floats(-1e9, 1e9, allow_nan=False)


@given(st.data(), st.integers(0, 400), st.integers(1, 20))
def test_the_points_kept_hold_each_bucket_s_ends_and_extremes(
    data: st.DataObject, n: int, buckets: int
) -> None:
    eq = data.draw(st.lists(values, min_size=n, max_size=n))
    dd = data.draw(st.lists(values, min_size=n, max_size=n))
    keep = envelope(eq, dd, buckets=buckets)
    assert keep == sorted(set(keep)) and all(0 <= i < n for i in keep)
    if n <= 4 * buckets:
        assert keep == list(range(n))
        return
    assert len(keep) <= 6 * buckets
    kept = set(keep)
    for b in range(buckets):
        run = range(int(b * n // buckets), int((b + 1) * n // buckets))
        for series in (eq, dd):
            part = [series[i] for i in run]
            assert {run[0], run[-1]} <= kept
            assert min(part) in {series[i] for i in run if i in kept}, f"bucket {b}: lowest point lost"
            assert max(part) in {series[i] for i in run if i in kept}, f"bucket {b}: highest point lost"


def test_a_short_curve_is_plotted_whole_and_a_long_one_reduced() -> None:
    assert envelope([1.0, 2.0], [0.0, 0.0]) == [0, 1]
    long = [float((i * 7919) % 1000) for i in range(100_000)]
    keep = envelope(long, [0.0] * len(long))
    assert 0 < len(keep) <= 6000 and min(long[i] for i in keep) == 0.0 and max(long[i] for i in keep) == 999.0
