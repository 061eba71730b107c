"""Leases: one writer per table of a run root at a time; readers never wait.

A command that writes a table holds that table's lease while it works out what is pending and
writes it (`hold(root, "clips")`); `compact` holds the lease of each table it rewrites. A second
writer waits up to `wait_s` seconds, then raises `LeaseHeld`, whose message names the holder
(host, pid, start time, command) and says what to do. Readers (`sql`, `status`, the report,
`verify`, a stage reading the tables before it) take no lease.

Local run root: an OS file lock (`flock`) on `<root>/_leases/<table>.lock`, which also holds the
holder's JSON. The kernel drops the lock when the holder dies, however it dies, so a killed
command never blocks the root.

S3 run root: object stores have no lock, and pyarrow's client cannot send `If-None-Match: *`,
so a lease is a claim object `<root>/_leases/<table>/<claim>.json` taken by put-then-list, which
relies only on S3's strong read-after-write consistency (AWS since 2020, SeaweedFS, MinIO): a
contender puts its claim, then lists the folder. If it sees no other live claim, the lease is
its own; otherwise it deletes its claim and tries again after a random pause. Of two contenders
at least one sees the other's claim (each lists after its own put completed), so two never both
win; both may back off, and the random pause breaks the tie. A claim carries an expiry that the
holder's heartbeat thread pushes forward every `HEARTBEAT_S`; a claim past its expiry belongs
to a dead holder and is deleted by the next contender, so a killed command blocks the table for
at most `TTL_S`. Node clocks must agree to well within `TTL_S` (NTP does). If the heartbeat
finds its claim gone (an operator's `--force-unlock`, or a holder stalled past its expiry), the
holder stops with KeyboardInterrupt rather than write beside a new holder.
"""

from __future__ import annotations

import _thread
import contextlib
import fcntl
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from manifests import fs

log = logging.getLogger("reelsift")

LEASES = "_leases"
TTL_S = 60.0  # an S3 claim not refreshed for this long belongs to a dead holder
HEARTBEAT_S = 10.0  # how often a holder refreshes its S3 claim
POLL_S = 0.5  # how often a waiting writer tries again (jittered on S3)


class LeaseHeld(RuntimeError):
    """Another command holds the lease; the message names it and says what to do."""

    def __init__(self, root, table: str, holder: dict, waited_s: float):
        self.holder = holder
        started = holder.get("started", "?")
        waited = f" (waited {waited_s:.0f} s)" if waited_s else ""
        super().__init__(
            f"table {table!r} of {root} is being written by another command{waited}: "
            f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, started {started}, "
            f"`{holder.get('command', '?')}`. Wait for it to finish, or pass --lock-wait SECONDS "
            "to wait for it; if that process is dead, --force-unlock breaks its lease"
        )


def me(command: str) -> dict:
    """The holder record of this process."""
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return dict(host=socket.gethostname(), pid=os.getpid(), started=started, command=command)


@contextlib.contextmanager
def hold(root, table: str, *, command: str = "", wait_s: float = 0.0, force: bool = False) -> Iterator[dict]:
    """Hold the lease of `table` under `root` for the block -> this holder's record.

    Waits up to `wait_s` seconds for another holder, then raises LeaseHeld. `force` first
    breaks whatever lease is there (for an operator who knows its holder is dead)."""
    root = fs.upath(root)
    if force:
        force_unlock(root, table)
    if fs.is_s3(root):
        with _hold_s3(root, table, me(command), wait_s) as record:
            yield record
    else:
        with _hold_local(root, table, me(command), wait_s) as record:
            yield record


@contextlib.contextmanager
def hold_all(root, tables, **kw) -> Iterator[None]:
    """Hold the leases of several tables (in a fixed order, so two callers never deadlock)."""
    with contextlib.ExitStack() as stack:
        for table in sorted(set(tables)):
            stack.enter_context(hold(root, table, **kw))
        yield


def holder(root, table: str) -> dict | None:
    """The record of whoever holds `table`'s lease now, or None (never waits)."""
    root = fs.upath(root)
    if fs.is_s3(root):
        live = _live_claims(root / LEASES / table, mine=None)
        return live[0][1] if live else None
    path = root / LEASES / f"{table}.lock"
    if not path.exists():
        return None
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            return _parse(fh.read()) or {}
        fcntl.flock(fh, fcntl.LOCK_UN)
    return None


def force_unlock(root, table: str) -> dict | None:
    """Break `table`'s lease -> the record of the holder it broke, or None."""
    root = fs.upath(root)
    found = holder(root, table)
    if fs.is_s3(root):
        for claim in (root / LEASES / table).list_files():
            claim.unlink(missing_ok=True)
    else:  # a fresh file: the old holder's flock is on an inode nobody opens any more
        (root / LEASES / f"{table}.lock").unlink(missing_ok=True)
    if found:
        log.warning("lease of %s broken: it was held by host %s pid %s since %s", table,
                    found.get("host"), found.get("pid"), found.get("started"))
    return found


def _parse(text: str) -> dict | None:
    try:
        return json.loads(text) if text.strip() else None
    except json.JSONDecodeError:
        return None


# --- local disk: flock ------------------------------------------------------------------------

@contextlib.contextmanager
def _hold_local(root: Path, table: str, record: dict, wait_s: float) -> Iterator[dict]:
    folder = root / LEASES
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{table}.lock"
    t0 = time.monotonic()
    while True:
        fh = open(path, "a+")  # never truncate before the lock is ours: it names the holder
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            current = _parse(fh.read()) or {}
            fh.close()
            waited = time.monotonic() - t0
            if waited >= wait_s:
                raise LeaseHeld(root, table, current, waited) from None
            time.sleep(min(POLL_S, max(wait_s - waited, 0.01)))
            continue
        if not _same_file(fh, path):  # force-unlocked between open and flock: take the new file
            fh.close()
            continue
        break
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps(record))
        fh.flush()
        yield record
    finally:
        fh.seek(0)
        fh.truncate()
        fh.close()  # closing drops the flock


def _same_file(fh, path: Path) -> bool:
    try:
        return os.fstat(fh.fileno()).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


# --- S3: put-then-list claims with expiry and heartbeat -------------------------------------

def _dead_here(record: dict) -> bool:
    """A claim made on this host by a process that no longer runs (killed, crashed): its holder
    is known dead now, so a re-run on the same machine need not wait for the claim to expire."""
    if record.get("host") != socket.gethostname() or not isinstance(record.get("pid"), int):
        return False
    if record["pid"] == os.getpid():
        return False
    try:
        os.kill(record["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _live_claims(folder, mine) -> list[tuple[object, dict]]:
    """(claim, record) of every unexpired claim under `folder` but `mine`, oldest first;
    expired claims are deleted on the way (their holders are dead)."""
    live = []
    for claim in sorted(folder.list_files()):
        if claim == mine:
            continue
        try:
            record = _parse(claim.read_text())
        except FileNotFoundError:
            continue  # released or backed off while we listed
        if record is None:  # written by a put in flight: treat as live, it expires if not
            record = dict(expires=time.time() + TTL_S)
        if record.get("expires", 0) < time.time() or _dead_here(record):
            log.warning("lease: removing the expired claim %s of host %s pid %s", claim.name,
                        record.get("host"), record.get("pid"))
            claim.unlink(missing_ok=True)
            continue
        live.append((claim, record))
    return live


@contextlib.contextmanager
def _hold_s3(root, table: str, record: dict, wait_s: float) -> Iterator[dict]:
    folder = root / LEASES / table
    claim = folder / f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.json"
    t0 = time.monotonic()
    while True:
        claim.write_text(json.dumps({**record, "expires": time.time() + TTL_S}))
        live = _live_claims(folder, mine=claim)
        if not live:
            break
        claim.unlink(missing_ok=True)
        waited = time.monotonic() - t0
        if waited >= wait_s:
            raise LeaseHeld(root, table, live[0][1], waited)
        time.sleep(min(POLL_S * (0.5 + random.random()), max(wait_s - waited, 0.01)))
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(claim, record, stop), daemon=True,
                            name=f"lease-{table}")
    beat.start()
    try:
        yield record
    finally:
        stop.set()
        beat.join()
        claim.unlink(missing_ok=True)


def _heartbeat(claim, record: dict, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        try:
            if not claim.exists():
                log.error("lease %s was broken by another command (--force-unlock, or this one "
                          "stalled past its expiry): stopping so that two never write at once", claim)
                _thread.interrupt_main()
                return
            claim.write_text(json.dumps({**record, "expires": time.time() + TTL_S}))
        except OSError as exc:  # the store is down for a moment: the TTL leaves room to retry
            log.warning("lease heartbeat of %s failed: %s", claim, exc)
