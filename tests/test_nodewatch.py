"""A stage whose Ray cluster loses a node mid-stage plans again on the nodes left
(curation/nodewatch.py) instead of waiting for actors that can never be placed.

The stage runs on real embedded Ray; only the count of alive CPUs is stood in for, as a lost node
would change it (the real node death is tests/test_cluster_s3.py, a slow test)."""

from __future__ import annotations

import logging
import threading
import time

import pyarrow as pa
import pytest

from curation import nodewatch, registry, runner
from curation.chain import Chain
from curation.config import load_config
from curation.nodewatch import ClusterShrank, NodeWatch
from curation.registry import Context, Stage
from manifests.configtools import Resources
from manifests.schemas import CLIPS
from manifests.store import Table, rows_to_table
from tests.test_registry import TOY, Shout


class Slow(Shout):
    """test_registry's toy operator, 0.2 s a batch of 2 clip ids: the stream lasts a few seconds."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        time.sleep(0.2)
        return super().__call__(batch)


@pytest.fixture
def slow_stage():
    stage = registry.register(Stage(
        "slowtoy", "a slow toy -> slowtoy_rows", table="slowtoy_rows", key="clip_id", unit="clips",
        pending=lambda con, cfg: "SELECT clip_id FROM clips WHERE clip_id NOT IN "
                                 "(SELECT clip_id FROM slowtoy_rows) ORDER BY clip_id",
        ops=lambda cfg, root: Chain.of((Slow, None, Resources(num_cpus=1, batch_size=2))),
        schema=TOY,
    ))
    yield stage
    registry.unregister("slowtoy")


def test_a_node_lost_mid_stage_runs_the_rest_again_on_the_nodes_left(
        ray_local, slow_stage, tmp_path, monkeypatch, caplog):
    ids = [f"c{i:02d}" for i in range(40)]
    clips = [dict(clip_id=c, video_id="v", status="ok") for c in ids]
    Table(tmp_path, "clips").write(rows_to_table(clips, CLIPS))
    cluster = {"cpus": 2.0}
    planned: list[float] = []

    def cluster_cpus() -> float:
        planned.append(cluster["cpus"])
        return cluster["cpus"]

    monkeypatch.setattr(runner, "cluster_cpus", cluster_cpus)
    monkeypatch.setattr(nodewatch, "alive_cpus", lambda: cluster["cpus"])
    monkeypatch.setattr(nodewatch, "POLL_S", 0.1)
    rows = Table(tmp_path, "slowtoy_rows")

    def lose_a_node() -> None:  # once some rows are stored, as a node dying mid-stage
        deadline = time.monotonic() + 60
        while not rows.parts() and time.monotonic() < deadline:
            time.sleep(0.05)
        cluster["cpus"] = 1.0

    killer = threading.Thread(target=lose_a_node)
    killer.start()
    cfg = load_config("configs/offline.yaml", ["ray.flush_rows=2", "ray.inline_max_items=0"])
    with caplog.at_level(logging.WARNING, logger="reelsift"):
        slow_stage.run(Context(cfg, tmp_path))
    killer.join()

    assert planned == [2.0, 1.0]  # the second run fits the one CPU left
    assert "lost a node: 1 CPUs alive, the stage was planned on 2" in caplog.text
    assert "running the stage again on the nodes left (2/3)" in caplog.text
    stored = rows.read(["clip_id"]).column("clip_id").to_pylist()
    assert 0 < len(rows.parts()) and sorted(stored) == ids  # every clip once: none lost, none twice


def test_a_cluster_that_keeps_shrinking_is_an_error_after_three_runs(monkeypatch):
    calls = []

    def step(stage, ctx):
        calls.append(1)
        raise ClusterShrank("the Ray cluster lost a node")

    stage = Stage("shrinks", "", table="clips", key="clip_id", unit="clips", pending=None, step=step)
    with pytest.raises(ClusterShrank):
        stage.run(Context(None, None))
    assert len(calls) == nodewatch.ATTEMPTS


def test_the_watch_raises_in_the_main_thread_only_when_cpus_drop():
    quiet = NodeWatch(4.0, cpus=lambda: 4.0, poll_s=0.01)
    with quiet:
        time.sleep(0.1)
    assert not quiet.fired

    drop = NodeWatch(4.0, cpus=lambda: 2.0, poll_s=0.01)
    with pytest.raises(ClusterShrank, match="2 CPUs alive, the stage was planned on 4"):
        with drop:
            time.sleep(5)
    assert drop.fired


def test_rows_being_stored_are_never_cut_off_by_the_watch():
    """The watch fires while rows are stored: it waits until they are, then raises."""
    stored = []
    drop = NodeWatch(4.0, cpus=lambda: 2.0, poll_s=0.01)
    with pytest.raises(ClusterShrank):
        with drop:
            with drop.storing():
                time.sleep(0.3)  # the watch fires in here
                stored.append("part")
            time.sleep(5)  # never reached
    assert drop.fired and drop.deferred and stored == ["part"]


def test_a_real_ctrl_c_during_a_stage_is_still_a_keyboard_interrupt():
    import _thread
    import signal

    before = signal.getsignal(signal.SIGINT)
    quiet = NodeWatch(4.0, cpus=lambda: 4.0, poll_s=0.01)
    with pytest.raises(KeyboardInterrupt):
        with quiet:
            _thread.interrupt_main(signal.SIGINT)
            time.sleep(5)
    assert not quiet.fired and signal.getsignal(signal.SIGINT) is before


def test_a_main_thread_blocked_in_a_lock_is_woken():
    """Ray Data's iterator may wait in a plain lock: the watch must wake it (a real signal), not
    only set Python's flag, which a blocked thread never reads (the stall this replaces)."""
    lock = threading.Lock()
    lock.acquire()
    t0 = time.monotonic()
    with pytest.raises(ClusterShrank):
        with NodeWatch(4.0, cpus=lambda: 2.0, poll_s=0.05):
            lock.acquire(timeout=30)  # nobody releases it
    assert time.monotonic() - t0 < 10
