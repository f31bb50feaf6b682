"""Fixtures for Quiver's Python end-to-end tests.

They talk to a real `quiver serve` (the binary named by $QUIVER_BIN) with plain
pyarrow.flight: no Quiver code on the Python side, exactly like a training job.
"""
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def quiver_bin() -> str:
    b = os.environ.get("QUIVER_BIN")
    if b:
        return b
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    return str(Path(target) / "debug" / "quiver")


def score_bin() -> str:
    b = os.environ.get("QUIVER_SCORE_BIN")
    if b:
        return b
    return str(Path(quiver_bin()).parent / "quiver-score")


def action(client, name, body):
    """Runs a Flight action; one decoded JSON result per streamed result."""
    import pyarrow.flight as flight
    return [json.loads(r.body.to_pybytes()) for r in client.do_action(flight.Action(name, json.dumps(body).encode()))]


def run(repo: Path, *args: str) -> str:
    out = subprocess.run([quiver_bin(), "--repo", str(repo), *args], check=True, capture_output=True, text=True)
    return out.stdout


def serve(repo: Path, env=None):
    """Starts `quiver serve` on an ephemeral loopback port; returns the process and
    its host:port once it prints its readiness line."""
    proc = subprocess.Popen(
        [quiver_bin(), "--repo", str(repo), "serve", "--addr", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    line = proc.stdout.readline().strip()
    assert line.startswith("quiver serving on "), f"unexpected readiness line {line!r}"
    return proc, line.rsplit(" ", 1)[1]


@pytest.fixture(scope="session")
def repo():
    d = Path(tempfile.mkdtemp(prefix="quiver-py-"))
    for f in ("quiver.yaml", "features.yaml"):
        shutil.copy(ROOT / "feature_repo" / f, d / f)
    run(d, "datagen", "--cards", "2000", "--days", "40")
    run(d, "apply")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def server(repo):
    """Starts `quiver serve` on an ephemeral port; ready when it prints its address."""
    proc, addr = serve(repo)
    yield f"grpc://{addr}"
    proc.terminate()
    proc.wait(timeout=10)


# The online tests judge ttl as of this instant (the server's clock is fixed to it
# with QUIVER_NOW): half a day after the generated data's last day.
ONLINE_NOW = "2026-02-10T12:00:00+00:00"


@pytest.fixture(scope="session")
def online_server(repo):
    """A second `quiver serve` over the same Parquet data with its own RocksDB and a
    fixed clock, so online ttls are judged as of ONLINE_NOW."""
    d = Path(tempfile.mkdtemp(prefix="quiver-py-online-"))
    (d / "quiver.yaml").write_text(
        f"project: fraud\noffline_store:\n  url: {repo / 'data'}\nonline_store:\n  path: ./online\n"
    )
    shutil.copy(ROOT / "feature_repo" / "features.yaml", d / "features.yaml")
    run(d, "apply")
    env = dict(os.environ, QUIVER_NOW=ONLINE_NOW)
    proc, addr = serve(d, env=env)
    yield f"grpc://{addr}"
    proc.terminate()
    proc.wait(timeout=10)
    shutil.rmtree(d, ignore_errors=True)


TANSU = os.environ.get("QUIVER_TANSU", str(ROOT / ".venv" / "bin" / "tansu"))


@pytest.fixture()
def kafka_broker():
    """A real Kafka-protocol broker (tansu, topics in memory) on a free loopback
    port. Call it with topic names (and `partitions=`); returns host:port."""
    procs = []

    def start(*topics, partitions=3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"tcp://127.0.0.1:{port}"
        procs.append(subprocess.Popen(
            [TANSU, "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.time() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline, "tansu did not listen"
                time.sleep(0.05)
        for topic in topics:
            subprocess.run([TANSU, "topic", "create", topic, "--broker", url, "--partitions", str(partitions)], check=True)
        return f"127.0.0.1:{port}"

    yield start
    for p in procs:
        p.kill()
        p.wait()
