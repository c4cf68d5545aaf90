"""The daemons' collector settings (reverse_http.gctuning)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from reverse_http.gctuning import YOUNG_THRESHOLD, tune_for_daemon


@pytest.fixture
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restore_gc")
def test_start_up_objects_are_frozen_and_the_young_generation_is_large() -> None:
    gc.unfreeze()
    tune_for_daemon()
    assert gc.get_freeze_count() > 1000  # the imported modules and their objects
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD
    # objects that live a while (packets awaiting their ACK) are not scanned for it
    gc.collect()
    before = gc.get_stats()[0]["collections"]
    alive = [[] for _ in range(YOUNG_THRESHOLD // 2)]  # 35 young collections by default
    assert gc.get_stats()[0]["collections"] == before
    assert len(alive) == YOUNG_THRESHOLD // 2
