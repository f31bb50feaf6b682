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
import threading
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


# What `quiver serve` prints on stdout once each listener is bound, in this order:
# the Flight port first, then the optional Flight SQL and HTTP listeners.
READY = {
    "flight": "quiver serving on ",
    "sql": "quiver flight sql serving on ",
    "http": "quiver http serving on ",
}


def _readlines(proc, n, timeout):
    """The first n lines of proc's stdout; fewer if it stops printing for `timeout`
    seconds or exits (a thread, so a missing line cannot hang the session)."""
    lines = []

    def read():
        for _ in range(n):
            line = proc.stdout.readline()
            if not line:
                return
            lines.append(line.strip())

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(timeout)
    return list(lines)


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def serve(repo: Path, env=None, extra_args=(), lines=1, timeout=60):
    """Starts `quiver serve` on an ephemeral loopback port (plus `extra_args`); returns
    the process and its host:port once it prints its readiness line. With lines > 1
    (listeners enabled by extra_args print one line each) returns the process and
    the list of readiness lines instead."""
    proc = subprocess.Popen(
        [quiver_bin(), "--repo", str(repo), "serve", "--addr", "127.0.0.1:0", *extra_args],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    got = _readlines(proc, lines, timeout)
    if len(got) < lines or not got[0].startswith(READY["flight"]):
        stop(proc)
        raise AssertionError(f"`quiver serve {' '.join(extra_args)}` printed {got!r}, expected {lines} readiness line(s) "
                             f"starting with {READY['flight']!r}")
    if lines == 1:
        return proc, got[0].rsplit(" ", 1)[1]
    return proc, got


def serve_listeners(repo: Path, env=None, sql=False, http=False):
    """Starts `quiver serve` with the Flight listener and, as asked, the Flight SQL and
    HTTP listeners, all on ephemeral loopback ports. Returns the process and
    {"flight": "grpc://host:port", "sql": "host:port", "http": "http://host:port"}
    (only the listeners asked for), checking the readiness lines and their order."""
    wanted = ["flight"] + (["sql"] if sql else []) + (["http"] if http else [])
    args = (["--flight-sql-addr", "127.0.0.1:0"] if sql else []) + (["--http-addr", "127.0.0.1:0"] if http else [])
    proc, lines = serve(repo, env=env, extra_args=args, lines=len(wanted))
    addrs = {}
    for name, line in zip(wanted, lines):
        if not line.startswith(READY[name]):
            stop(proc)
            raise AssertionError(f"readiness lines {lines!r}: expected {READY[name]!r}... for the {name} listener "
                                 f"(order: {', '.join(READY[n].strip() for n in wanted)})")
        addrs[name] = line[len(READY[name]):].strip()
    for name, addr in addrs.items():
        host, _, port = addr.rpartition(":")
        if not (host and port.isdigit() and int(port) > 0):
            stop(proc)
            raise AssertionError(f"the {name} listener printed {addr!r}, not the bound host:port")
    out = {"flight": f"grpc://{addrs['flight']}"}
    if sql:
        out["sql"] = addrs["sql"]
    if http:
        out["http"] = f"http://{addrs['http']}"
    return proc, out


def sibling_repo(repo: Path, prefix: str) -> Path:
    """A repo over the session repo's Parquet data with its own RocksDB (two servers
    cannot open one online store), applied."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    (d / "quiver.yaml").write_text(
        f"project: fraud\noffline_store:\n  url: {repo / 'data'}\nonline_store:\n  path: ./online\n"
    )
    shutil.copy(ROOT / "feature_repo" / "features.yaml", d / "features.yaml")
    run(d, "apply")
    return d


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
    stop(proc)


# The online tests judge ttl as of this instant (the server's clock is fixed to it
# with QUIVER_NOW): half a day after the generated data's last day.
ONLINE_NOW = "2026-02-10T12:00:00+00:00"


def materialize(location):
    """Materializes every view up to ONLINE_NOW through the `materialize` Flight action
    (as test_online.py does); returns the reports."""
    import pyarrow.flight as flight
    reports = action(flight.FlightClient(location), "materialize", {"start": "2025-01-01T00:00:00Z", "end": ONLINE_NOW})
    assert sorted(r["view"] for r in reports) == ["card_stats", "card_txn_windows", "customers", "merchant_stats"], reports
    assert all(r["rows_read"] > 0 and r["keys_written"] > 0 for r in reports), reports
    return reports


@pytest.fixture(scope="session")
def online_server(repo):
    """A second `quiver serve` over the same Parquet data with its own RocksDB and a
    fixed clock, so online ttls are judged as of ONLINE_NOW."""
    d = sibling_repo(repo, "quiver-py-online-")
    env = dict(os.environ, QUIVER_NOW=ONLINE_NOW)
    proc, addr = serve(d, env=env)
    yield f"grpc://{addr}"
    stop(proc)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def online_http(repo):
    """Like online_server (own RocksDB, clock fixed at ONLINE_NOW), with the HTTP
    (Feast feature server) listener too, materialized up to ONLINE_NOW. Yields
    {"flight": "grpc://host:port", "http": "http://host:port", "repo": Path} (the
    served sibling repo, for `quiver feast export`)."""
    d = sibling_repo(repo, "quiver-py-online-http-")
    env = dict(os.environ, QUIVER_NOW=ONLINE_NOW)
    proc, addrs = serve_listeners(d, env=env, http=True)
    try:
        materialize(addrs["flight"])
        yield dict(addrs, repo=d)
    finally:
        stop(proc)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def sql_server(repo):
    """`quiver serve` over the session repo's Parquet data (its own RocksDB) with the
    Flight, Flight SQL and HTTP listeners. Yields {"flight": "grpc://host:port",
    "sql": "host:port", "http": "http://host:port"}."""
    d = sibling_repo(repo, "quiver-py-sql-")
    proc, addrs = serve_listeners(d, sql=True, http=True)
    try:
        yield addrs
    finally:
        stop(proc)
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
