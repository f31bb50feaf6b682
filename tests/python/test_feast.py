"""Feast's own Python SDK against Quiver. `quiver feast export` writes a
feature_store.yaml (remote offline store = the Flight port, remote online store =
the HTTP port) and a registry.db; `feast.FeatureStore(repo_path=...)` then trains,
looks up and pushes through Quiver. Every answer is compared with Quiver's native
answer to the same request on the same server (and the training set with DuckDB's
ASOF join too), never with hard-coded values."""
import json
import math
import shutil
import subprocess
import tempfile
import threading
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import ONLINE_NOW, quiver_bin
from test_historical import duckdb_reference, exchange

ROOT = Path(__file__).resolve().parents[2]

# Features of the training-set tests, from three views and two entities.
REFS = ["card_stats:avg_amt_1d", "card_stats:txn_count_1d", "customers:credit_limit",
        "merchant_stats:merchant_avg_amt_1d"]
FEATURES = [r.split(":")[1] for r in REFS]

# Online lookups by card: a plain view, a view without ttl and Quiver's windows.
ONLINE_REFS = ["card_stats:avg_amt_1d", "card_stats:txn_count_1d", "card_stats:max_amt_1d",
               "customers:home_lat", "customers:credit_limit",
               "card_txn_windows:txn_count_5m", "card_txn_windows:amt_sum_1h", "card_txn_windows:amt_avg_1d",
               "card_txn_windows:amt_max_1d", "card_txn_windows:amt_min_1h", "card_txn_windows:merchants_1h"]
KNOWN_CARDS = [4000000000000000 + i for i in range(0, 2000, 37)]
UNKNOWN_CARD = 17
PUSHED_CARD = 4_000_000_000_777_777  # in no generated data, and unused by test_http.py

# What the export leaves out, by kind (features.yaml's names).
NOT_EXPORTED = ["txn_context", "window_context", "chargebacks", "fraud_v3", "fraud_v4"]


# ---------------------------------------------------------------- helpers

def do_get(location, command):
    """Native online lookup: DoGet with the documented JSON ticket."""
    return flight.FlightClient(location).do_get(flight.Ticket(json.dumps({"get_online_features": command}).encode())).read_all()


def native_entity_sql(location, command):
    """Native training set over an SQL spine: GetFlightInfo, then DoGet its ticket."""
    client = flight.FlightClient(location)
    info = client.get_flight_info(flight.FlightDescriptor.for_command(json.dumps({"get_historical_features": command}).encode()))
    return client.do_get(info.endpoints[0].ticket).read_all()


def plain(v):
    """One cell as a comparable Python value: null, NaN and NaT are None (pandas
    turns a null float into NaN and a null int column into floats)."""
    if v is None or v is pd.NaT or v is pd.NA:
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, pd.Timestamp):
        return v
    if hasattr(v, "item"):  # numpy scalar
        v = v.item()
        if isinstance(v, float) and math.isnan(v):
            return None
    return v


def cells(column):
    if isinstance(column, (pa.ChunkedArray, pa.Array)):
        column = column.to_pandas()
    return [plain(v) for v in column.tolist()]


def assert_column_equal(what, name, got, want):
    got, want = cells(got), cells(want)
    assert len(got) == len(want), f"{what} {name}: {len(got)} rows, expected {len(want)}"
    bad = [(i, g, w) for i, (g, w) in enumerate(zip(got, want)) if g != w]
    assert not bad, f"{what} {name}: {len(bad)} of {len(got)} rows differ; first (row, feast, native): {bad[:5]}"


def assert_timestamps_equal(what, name, got, want):
    """Same instants (tz-aware UTC), whatever the unit."""
    got = pd.to_datetime(pd.Series(got), utc=False)
    want = pd.to_datetime(pd.Series(want), utc=False)
    assert getattr(got.dt, "tz", None) is not None, f"{what} {name}: came back naive ({got.dtype}), sent tz-aware UTC"
    assert_column_equal(what, name, got.dt.tz_convert("UTC").astype("datetime64[ns, UTC]"),
                        want.dt.tz_convert("UTC").astype("datetime64[ns, UTC]"))


def no_hang(fn, timeout=60):
    """Runs fn in a thread; returns what it raised (None if it returned). Fails if it
    has not finished within `timeout` seconds (a hung call must not hang the suite)."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - the test inspects it
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"the call did not return within {timeout}s"
    return box.get("error")


def spine(repo, rows=2000):
    """≈rows transactions spread over the whole period: the native spine (Arrow,
    as test_historical.py sends it) and the same rows as Feast users build them
    (pandas, tz-aware UTC datetimes), each with a row id `rid`."""
    tx = pq.read_table(repo / "data" / "transactions" / "part-00000.parquet")
    step = tx.num_rows // rows
    table = tx.take(pa.array(range(0, step * rows, step))).select(["cc_num", "merchant_id", "event_timestamp"])
    table = table.append_column("rid", pa.array(range(table.num_rows), pa.int64()))
    df = table.to_pandas()
    df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], utc=True).astype("datetime64[ns, UTC]")
    return table, df.reset_index(drop=True)


def online_dict(store, features, entity_rows, **kw):
    return store.get_online_features(features=features, entity_rows=entity_rows, **kw).to_dict()


def assert_online_equal(what, got, native):
    """Feast's to_dict() equals the native DoGet table: same names in the same
    order, same values (None for a missing value)."""
    want = native.to_pydict()
    assert list(got) == list(want), f"{what}: Feast names {list(got)}, native {list(want)}"
    for name in want:
        assert got[name] == want[name], f"{what} {name}: Feast {got[name][:8]}..., native {want[name][:8]}..."


# ---------------------------------------------------------------- the store

@pytest.fixture(scope="module")
def feast(online_http):
    """`quiver feast export` of the served sibling repo (the Flight and HTTP ports of
    online_http: clock at ONLINE_NOW, materialized), opened with Feast's SDK."""
    from feast import FeatureStore

    out = Path(tempfile.mkdtemp(prefix="quiver-feast-"))
    flight_addr = online_http["flight"].removeprefix("grpc://")
    http_addr = online_http["http"].removeprefix("http://")
    cmd = [quiver_bin(), "--repo", str(online_http["repo"]), "feast", "export", "--out", str(out),
           "--addr", flight_addr, "--http-addr", http_addr]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"`{' '.join(cmd[1:])}` failed ({done.returncode}): {done.stderr[-2000:]}"
        yield SimpleNamespace(store=FeatureStore(repo_path=str(out)), out=out, stdout=done.stdout,
                              flight=online_http["flight"], http=online_http["http"], flight_addr=flight_addr,
                              http_addr=http_addr)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def native_types(location, view, join_key, features):
    """The Arrow types of a view's features, as the native online lookup answers them."""
    table = do_get(location, {"features": [f"{view}:{f}" for f in features], "entities": {join_key: [UNKNOWN_CARD]}})
    return {f: table.schema.field(f).type for f in features}


# ---------------------------------------------------------------- 1. the registry

def test_export_writes_what_feast_can_serve(feast):
    from feast.type_map import pa_to_feast_value_type

    # feature_store.yaml points Feast at this server.
    config = yaml.safe_load((feast.out / "feature_store.yaml").read_text())
    assert config["project"] == "fraud", config
    assert config["provider"] == "local", config
    host, _, port = feast.flight_addr.rpartition(":")
    assert config["offline_store"] == {"type": "remote", "host": host, "port": int(port)}, config["offline_store"]
    assert config["online_store"] == {"type": "remote", "path": f"http://{feast.http_addr}"}, config["online_store"]
    assert config["entity_key_serialization_version"] == 3, config
    registry = Path(config["registry"])
    assert registry.is_absolute() and registry.resolve() == (feast.out / "registry.db").resolve(), config["registry"]

    store = feast.store
    definitions = yaml.safe_load((ROOT / "feature_repo" / "features.yaml").read_text())
    entities = {e.name: e.join_key for e in store.list_entities()}
    assert entities == {e["name"]: e["join_keys"][0] for e in definitions["entities"]}, entities

    sources = {s.name: type(s).__name__ for s in store.list_data_sources()}
    plain_sources = {v["source"] for v in definitions["feature_views"] if "aggregations" not in v}
    want_sources = {s["name"]: "FileSource" for s in definitions["sources"]}
    want_sources.update({f"{s}_push": "PushSource" for s in plain_sources})
    assert sources == want_sources, f"data sources {sources}, expected {want_sources}"

    views = {v.name: v for v in store.list_feature_views()}
    want_views = {v["name"]: [f["name"] for f in v.get("features", v.get("aggregations", []))]
                  for v in definitions["feature_views"]}
    assert {n: [f.name for f in v.features] for n, v in views.items()} == want_views, sorted(views)
    for name, view in views.items():
        spec = next(v for v in definitions["feature_views"] if v["name"] == name)
        assert view.entities == spec["entities"], f"{name}: entities {view.entities}"
        assert view.batch_source.name == spec["source"], f"{name}: batch source {view.batch_source.name}"
        if "aggregations" in spec:
            assert view.stream_source is None, f"{name} is computed by Quiver: no push source"
        else:
            assert view.stream_source is not None and view.stream_source.name == f"{spec['source']}_push", \
                f"{name}: stream source {view.stream_source}"
        # Feature types are the types the native lookup answers with.
        [key] = [c.name for c in view.entity_columns]
        types = native_types(feast.flight, name, key, want_views[name])
        for f in view.features:
            assert f.dtype.to_value_type() == pa_to_feast_value_type(str(types[f.name])), \
                f"{name}:{f.name} is {f.dtype} in Feast, {types[f.name]} natively"
    assert store.list_on_demand_feature_views() == [], "on-demand views are not exported"

    services = {s.name: s for s in store.list_feature_services()}
    assert sorted(services) == ["fraud_v1", "fraud_v2"], sorted(services)
    v2 = {p.name: [f.name for f in p.features] for p in services["fraud_v2"].feature_view_projections}
    assert v2 == {"card_stats": want_views["card_stats"], "customers": want_views["customers"],
                  "merchant_stats": ["merchant_avg_amt_1d"]}, v2

    # The export says what it left out.
    lines = feast.stdout.splitlines()
    for name in NOT_EXPORTED:
        assert any(name in line for line in lines), f"the export output does not name {name!r}:\n{feast.stdout}"
    for name in list(want_views) + ["fraud_v1", "fraud_v2", "card_stats_src_push"]:
        assert any(name in line for line in lines), f"the export output does not name exported {name!r}:\n{feast.stdout}"


# ---------------------------------------------------------------- 2-4. training sets

def test_historical_pandas_entity_df_equals_native_and_duckdb(repo, feast):
    table, entity_df = spine(repo)
    job = feast.store.get_historical_features(entity_df=entity_df, features=REFS)
    got = job.to_df()
    assert list(got.columns) == list(entity_df.columns) + FEATURES, f"columns {list(got.columns)}"
    assert len(got) == len(entity_df), f"{len(got)} rows for {len(entity_df)} entity rows"
    got = got.sort_values("rid", kind="stable").reset_index(drop=True)
    assert got["rid"].tolist() == entity_df["rid"].tolist(), "each entity row comes back once"
    # Entity columns as sent.
    for name in ("cc_num", "merchant_id"):
        assert_column_equal("feast vs entity_df", name, got[name], entity_df[name])
    assert_timestamps_equal("feast vs entity_df", "event_timestamp", got["event_timestamp"], entity_df["event_timestamp"])

    native = exchange(feast.flight, {"get_historical_features": {"features": REFS}}, table).sort_by("rid")
    assert native.column("rid").to_pylist() == entity_df["rid"].tolist()
    for name in FEATURES:
        assert_column_equal("feast vs native", name, got[name], native.column(name))
    ref = duckdb_reference(repo / "data", table)
    for name in FEATURES:
        assert_column_equal("feast vs duckdb", name, got[name], ref.column(name))
    # The comparison covers both outcomes: values found and values beyond the ttl.
    nulls = got["avg_amt_1d"].isna().sum()
    assert 0 < nulls < len(got), f"{nulls} null avg_amt_1d of {len(got)}: the spine does not exercise the ttl"


def test_historical_feature_service_full_feature_names(repo, feast):
    table, entity_df = spine(repo, rows=500)
    service = feast.store.get_feature_service("fraud_v1")
    got = feast.store.get_historical_features(entity_df=entity_df, features=service, full_feature_names=True).to_df()
    native = exchange(feast.flight, {"get_historical_features": {"feature_service": "fraud_v1", "full_feature_names": True}},
                      table).sort_by("rid")
    assert list(got.columns) == native.column_names, f"Feast {list(got.columns)}, native {native.column_names}"
    features = [n for n in native.column_names if n not in entity_df.columns]
    assert "card_stats__avg_amt_1d" in features and "customers__credit_limit" in features, features
    assert all(n.split("__")[0] in ("card_stats", "customers") for n in features), features
    got = got.sort_values("rid", kind="stable").reset_index(drop=True)
    assert got["rid"].tolist() == native.column("rid").to_pylist()
    for name in features:
        assert_column_equal("feast vs native", name, got[name], native.column(name))


def test_historical_sql_entity_df_equals_native_entity_sql(feast):
    sql = "SELECT trans_id, cc_num, merchant_id, event_timestamp FROM transactions ORDER BY trans_id LIMIT 300"
    got = feast.store.get_historical_features(entity_df=sql, features=REFS).to_df()
    native = native_entity_sql(feast.flight, {"features": REFS, "entity_sql": sql})
    assert native.num_rows == 300
    assert list(got.columns) == native.column_names, f"Feast {list(got.columns)}, native {native.column_names}"
    assert list(got.columns) == ["trans_id", "cc_num", "merchant_id", "event_timestamp"] + FEATURES
    got = got.sort_values("trans_id", kind="stable").reset_index(drop=True)
    native = native.sort_by("trans_id")
    for name in ("trans_id", "cc_num", "merchant_id"):
        assert_column_equal("feast vs native", name, got[name], native.column(name))
    assert_timestamps_equal("feast vs native", "event_timestamp", got["event_timestamp"],
                            native.column("event_timestamp").to_pandas())
    for name in FEATURES:
        assert_column_equal("feast vs native", name, got[name], native.column(name))


# ---------------------------------------------------------------- 5-6. online

def test_online_features_equal_native_do_get(feast):
    cards = KNOWN_CARDS + [UNKNOWN_CARD]
    rows = [{"cc_num": c} for c in cards]
    got = online_dict(feast.store, ONLINE_REFS, rows)
    native = do_get(feast.flight, {"features": ONLINE_REFS, "entities": {"cc_num": cards}})
    assert_online_equal("features", got, native)
    assert got["cc_num"] == cards, "entity rows in request order"
    for name in ("avg_amt_1d", "credit_limit", "amt_sum_1h"):
        assert got[name][-1] is None, f"{name} of the unknown card {UNKNOWN_CARD}: {got[name][-1]!r}"
    assert any(v is not None for v in got["avg_amt_1d"]), "no known card has a fresh card_stats row"
    assert any(v is None for v in got["avg_amt_1d"][:-1]), "no known card is beyond the ttl"

    full = online_dict(feast.store, ONLINE_REFS, rows, full_feature_names=True)
    native = do_get(feast.flight, {"features": ONLINE_REFS, "entities": {"cc_num": cards}, "full_feature_names": True})
    assert_online_equal("full feature names", full, native)
    assert "card_txn_windows__amt_avg_1d" in full, list(full)

    merchants = [i % 40 for i in range(len(cards))]
    service = feast.store.get_feature_service("fraud_v2")
    by_service = online_dict(feast.store, service, [{"cc_num": c, "merchant_id": m} for c, m in zip(cards, merchants)])
    native = do_get(feast.flight, {"feature_service": "fraud_v2", "entities": {"cc_num": cards, "merchant_id": merchants}})
    assert_online_equal("feature service fraud_v2", by_service, native)


def test_push_online_is_served_to_feast_and_native(feast):
    from feast.data_source import PushMode

    refs = ["card_stats:avg_amt_1d", "card_stats:txn_count_1d", "card_stats:max_amt_1d", "customers:credit_limit"]
    rows = [{"cc_num": PUSHED_CARD}]

    def both(what):
        got = online_dict(feast.store, refs, rows)
        assert_online_equal(what, got, do_get(feast.flight, {"features": refs, "entities": {"cc_num": [PUSHED_CARD]}}))
        return got

    before = both("before the push")
    assert before["avg_amt_1d"] == [None], f"card {PUSHED_CARD} already has card_stats: {before}"
    now = datetime.fromisoformat(ONLINE_NOW)
    pushed = pd.DataFrame({
        "cc_num": [PUSHED_CARD],
        "event_timestamp": [pd.Timestamp(now - timedelta(hours=1))],
        "created_timestamp": [pd.Timestamp(now - timedelta(minutes=30))],
        "avg_amt_1d": [42.25],
        "txn_count_1d": [3],
        "max_amt_1d": [97.5],
    })
    error = no_hang(lambda: feast.store.push("card_stats_src_push", pushed, to=PushMode.ONLINE))
    assert error is None, f"push raised {error!r}"
    after = both("after the push")
    for name in ("avg_amt_1d", "txn_count_1d", "max_amt_1d"):
        assert after[name] == pushed[name].tolist(), f"{name}: served {after[name]}, pushed {pushed[name].tolist()}"
    assert after["credit_limit"] == [None], "the push wrote card_stats only"
    status = do_get(feast.flight, {"features": refs, "entities": {"cc_num": [PUSHED_CARD]}, "include_metadata": True})
    assert status.column("card_stats__status").to_pylist() == ["PRESENT"], status.to_pydict()


# ---------------------------------------------------------------- 7. errors

def test_errors_raise_and_the_server_keeps_serving(repo, feast):
    store = feast.store
    table, entity_df = spine(repo, rows=20)

    # Online: the server refuses an unknown feature (4xx) and Feast raises.
    error = no_hang(lambda: online_dict(store, ["card_stats:nope_feature"], [{"cc_num": KNOWN_CARDS[0]}]))
    assert isinstance(error, Exception), "an unknown online feature did not raise"
    assert "nope_feature" in str(error), f"the error does not name the feature: {error!r}"

    # Offline: an unknown view (Feast checks it against the exported registry).
    error = no_hang(lambda: store.get_historical_features(entity_df=entity_df, features=["nope:x"]).to_df())
    assert isinstance(error, Exception), "an unknown feature view did not raise"
    assert "nope" in str(error), f"the error does not name the view: {error!r}"

    # Offline, refused by the server: a spine without a join key the features need,
    # and an entity SQL that does not run.
    no_merchant = entity_df.drop(columns=["merchant_id"])
    error = no_hang(lambda: store.get_historical_features(entity_df=no_merchant, features=REFS).to_df())
    assert isinstance(error, Exception), "a spine without merchant_id did not raise"
    assert "merchant_id" in str(error), f"the error does not name the missing key: {error!r}"
    error = no_hang(lambda: store.get_historical_features(entity_df="SELECT nope FROM nowhere_table", features=REFS).to_df())
    assert isinstance(error, Exception), "a broken entity SQL did not raise"

    # Still serving, both ports, with the same answers as natively.
    got = store.get_historical_features(entity_df=entity_df, features=REFS).to_df().sort_values("rid").reset_index(drop=True)
    native = exchange(feast.flight, {"get_historical_features": {"features": REFS}}, table).sort_by("rid")
    for name in FEATURES:
        assert_column_equal("after errors", name, got[name], native.column(name))
    cards = KNOWN_CARDS[:5]
    assert_online_equal("after errors", online_dict(store, ONLINE_REFS, [{"cc_num": c} for c in cards]),
                        do_get(feast.flight, {"features": ONLINE_REFS, "entities": {"cc_num": cards}}))
