"""The collector's settings for a long-running worker (`bifrost.collector`)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from bifrost.collector import YOUNG_GENERATION, settle_collector


@pytest.fixture
def restored_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_start_up_objects_are_frozen_and_the_young_generation_widened(restored_collector):
    """What exists when the worker has started is left out of collections, and a collection
    of the young generation waits for YOUNG_GENERATION new objects."""
    made_at_start_up = [[] for _ in range(1000)]
    settle_collector()
    collected = {id(tracked) for tracked in gc.get_objects()}
    assert id(made_at_start_up) not in collected
    assert gc.get_freeze_count() >= len(made_at_start_up)
    made_later: list[object] = []
    assert id(made_later) in {id(tracked) for tracked in gc.get_objects()}
    assert gc.get_threshold()[0] == YOUNG_GENERATION
