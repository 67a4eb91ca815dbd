"""Rows the Milvus sink reports written survive a restart of a Milvus Lite server."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.milvus_durability import run

pytestmark = pytest.mark.integration


def test_rows_written_with_flush_survive_a_milvus_lite_restart(tmp_path: Path) -> None:
    """Two writers upsert through MilvusEmbeddingSink(flush_writes=True), retrying as the
    worker does, while the server is stopped with SIGTERM and started again: every row
    the sink reported written is there after (without the flush, thousands are not)."""
    result = run(flush=True, work=tmp_path, before_s=6.0, down_s=4.0, min_before=300)
    assert result["acknowledged_before_the_stop"] > 100  # the stop came under writes
    assert result["missing"] == 0, result
