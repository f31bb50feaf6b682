"""Fixtures for Quiver's Python end-to-end tests.

They talk to a real `quiver serve` (the binary named by $QUIVER_BIN) with plain
pyarrow.flight: no Quiver code on the Python side, exactly like a training job.
"""
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def quiver_bin() -> str:
    b = os.environ.get("QUIVER_BIN")
    if b:
        return b
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    return str(Path(target) / "debug" / "quiver")


def run(repo: Path, *args: str) -> str:
    out = subprocess.run([quiver_bin(), "--repo", str(repo), *args], check=True, capture_output=True, text=True)
    return out.stdout


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
    proc = subprocess.Popen(
        [quiver_bin(), "--repo", str(repo), "serve", "--addr", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline().strip()
    assert line.startswith("quiver serving on "), f"unexpected readiness line {line!r}"
    addr = line.rsplit(" ", 1)[1]
    yield f"grpc://{addr}"
    proc.terminate()
    proc.wait(timeout=10)
