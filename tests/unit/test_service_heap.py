"""A service's heap once it started (libs.service.settle_heap): what start built is out of the cycle
collector's walks, the youngest generation is collected rarely, and cycles are still freed. Each
check runs in a Python of its own: the collector's state is per process, and pytest's is not ours
to change."""

import subprocess
import sys
import textwrap

from tests.stack import ROOT


def _run(code: str) -> None:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_settled_heap_is_frozen_and_its_young_objects_collected_rarely() -> None:
    _run("""
        import gc
        from libs.service import YOUNG_COLLECTION_EVERY, settle_heap

        built_at_start = [{"n": i} for i in range(10_000)]
        settle_heap()
        assert gc.get_freeze_count() >= len(built_at_start), gc.get_freeze_count()
        assert gc.get_threshold()[0] == YOUNG_COLLECTION_EVERY
        # 20,000 calls' worth of objects in flight (held, then let go): with Python's default
        # threshold of 700 the youngest generation is collected about 28 times meanwhile.
        young = gc.get_stats()[0]["collections"]
        in_flight = [[i] for i in range(20_000)]
        del in_flight
        assert gc.get_stats()[0]["collections"] - young == 0
    """)


def test_cycles_are_still_collected_after_settling() -> None:
    _run("""
        import gc, weakref
        from libs.service import YOUNG_COLLECTION_EVERY, settle_heap

        class Node:
            pass

        settle_heap()
        node = Node()
        node.itself = node  # a reference cycle, as an exception's traceback makes one
        gone = weakref.ref(node)
        del node
        keep = [[i] for i in range(YOUNG_COLLECTION_EVERY + 1000)]  # enough net allocations for a collection
        assert gone() is None
    """)


def test_a_rebuild_keeps_what_the_service_froze() -> None:
    _run("""
        import gc
        from libs.replay.rebuild import fewer_collections
        from libs.service import settle_heap

        settle_heap()
        frozen, thresholds = gc.get_freeze_count(), gc.get_threshold()
        with fewer_collections():
            assert gc.get_threshold()[0] >= 70_000
        assert gc.get_freeze_count() >= frozen and gc.get_threshold() == thresholds

        gc.unfreeze()  # a process that never settled: the rebuild leaves nothing frozen behind
        gc.set_threshold(700, 10, 10)
        with fewer_collections():
            pass
        assert gc.get_freeze_count() == 0 and gc.get_threshold() == (700, 10, 10)
    """)


def test_quota_collects_its_young_generation_often_in_short_pauses() -> None:
    _run("""
        import gc, runpy
        import libs.service

        options = {}
        libs.service.run_service = lambda factory, **given: options.update(given)  # its entry point, not run
        runpy.run_module("services.quota", run_name="__main__")
        libs.service.settle_heap(**options)
        assert gc.get_threshold()[0] <= 1_000, gc.get_threshold()
        young = gc.get_stats()[0]["collections"]
        in_flight = [[i] for i in range(20_000)]  # 20,000 objects alive: each collection walks those young
        assert gc.get_stats()[0]["collections"] - young >= 20
    """)
