"""Feast's own Python SDK against Quiver. `quiver feast export` writes a
feature_store.yaml (remote offline store = the Flight port, remote online store =
the HTTP port) and a registry.db; `feast.FeatureStore(repo_path=...)` then trains,
looks up and pushes through Quiver. Every answer is compared with Quiver's native
answer to the same request on the same server (and the training set with DuckDB's
ASOF join too), never with hard-coded values."""
import math
import shutil
import subprocess
import tempfile
import threading
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import flight_helpers  # noqa: F401  (placeholder removed below)
