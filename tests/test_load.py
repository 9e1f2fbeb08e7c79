"""Many concurrent sessions against one server process (a small form of the load
benchmark in benchmarks/load.py)."""

import pytest

from benchmarks.load import run_load

pytestmark = pytest.mark.slow

SERVER_MEMORY_CEILING_MIB = 400


def test_concurrent_sessions_complete_or_are_refused():
    result = run_load(users=2000, small=32, large=2, small_size=150, large_size=4000, advertiser_count=8,
                      max_sessions=18, per_advertiser=2)
    summary = result.summary()
    outcomes = {o for _, o, _ in result.outcomes}
    assert outcomes <= {"ok", "busy"}, result.outcomes
    assert summary["sessions"] == 34 and summary["wrong_counts"] == 0
    # 8 advertisers x 2 small sessions + 2 large ones fit the limit of 18: the large
    # sessions (advertisers of their own) always run, small ones beyond 2 per advertiser
    # are refused
    assert len(summary["large_s"]) == 2
    assert summary["refused"] > 0 and summary["completed"] >= 16
    assert summary["server_peak_mib"] < SERVER_MEMORY_CEILING_MIB, summary
    assert max(result.server_rss_samples_kib) / 1024 < SERVER_MEMORY_CEILING_MIB
