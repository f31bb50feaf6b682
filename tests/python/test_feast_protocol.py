"""The rest of Feast's remote offline-store protocol, spoken exactly as Feast 0.67's
client speaks it (`feast/infra/offline_stores/remote.py`: a CMD descriptor holding
`{"command_id", "api", ...}` as JSON; reads by DoExchange, writes by DoPut), on a
repo of its own (the writes add files). Answers are checked against DuckDB reading
the same Parquet files and against the native API."""
import json
import shutil
import tempfile
import uuid
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from conftest import ROOT, run, serve, stop

START, END = "2026-01-03T00:00:00+00:00", "2026-01-05T00:00:00"  # the end naive: UTC, as Feast sends it


@pytest.fixture(scope="module")
def own():
    d = Path(tempfile.mkdtemp(prefix="quiver-py-feast-protocol-"))
    for f in ("quiver.yaml", "features.yaml"):
        shutil.copy(ROOT / "feature_repo" / f, d / f)
    run(d, "datagen", "--cards", "300", "--days", "8")
    run(d, "apply")
    proc, addr = serve(d)
    yield d, f"grpc://{addr}"
    stop(proc)
    shutil.rmtree(d, ignore_errors=True)


def descriptor(api, **params):
    return flight.FlightDescriptor.for_command(json.dumps({"command_id": str(uuid.uuid4()), "api": api, **params}))


def placeholder():
    """Feast's table for "no table"."""
    return pa.table({"key": pa.array(["mock_key"])})


def exchange(location, api, table=None, **params):
    """Feast 0.67's `_call_exchange`."""
    table = table if table is not None else placeholder()
    writer, reader = flight.FlightClient(location).do_exchange(descriptor(api, **params))
    writer.begin(table.schema)
    writer.write_table(table)
    writer.done_writing()
    return reader.read_all()


def put(location, api, table=None, **params):
    """Feast's `_call_put`: errors surface when the writer closes."""
    table = table if table is not None else placeholder()
    writer, _ = flight.FlightClient(location).do_put(descriptor(api, **params), table.schema)
    writer.write_table(table)
    writer.close()


def feast_detail(e):
    """The {"module", "class", "message"} Feast's client parses out of an error."""
    text = str(e)
    assert "Flight error: " in text, text
    start = text.index("{", text.index("Flight error: "))
    for end in range(start + 1, len(text) + 1):
        try:
            return json.loads(text[start:end])
        except ValueError:
            continue
    raise AssertionError(f"no detail JSON in {text!r}")


PULL = dict(data_source_name="card_stats_src", join_key_columns=["cc_num"],
            feature_name_columns=["avg_amt_1d", "txn_count_1d"], timestamp_field="event_timestamp",
            created_timestamp_column="created_timestamp", start_date=START, end_date=END)


def test_pull_all_and_pull_latest_equal_duckdb(own):
    d, location = own
    src = f"read_parquet('{d}/data/card_stats.parquet')"
    window = "event_timestamp >= TIMESTAMPTZ '2026-01-03 00:00:00+00' AND event_timestamp <= TIMESTAMPTZ '2026-01-05 00:00:00+00'"
    got = exchange(location, "pull_all_from_table_or_query", **PULL)
    assert got.column_names == ["cc_num", "avg_amt_1d", "txn_count_1d", "event_timestamp", "created_timestamp"]
    want = duckdb.sql(f"SELECT count(*), sum(txn_count_1d) FROM {src} WHERE {window}").fetchall()[0]
    assert 0 < got.num_rows == want[0], (got.num_rows, want)
    assert pa.compute.sum(got.column("txn_count_1d")).as_py() == want[1]
    # Unbounded dates (null), as feast materialize may send them: every row.
    everything = exchange(location, "pull_all_from_table_or_query", **dict(PULL, start_date=None, end_date=None))
    assert everything.num_rows == duckdb.sql(f"SELECT count(*) FROM {src}").fetchall()[0][0]
    # Latest per key: the newest event, ties broken by the newest created time.
    latest = exchange(location, "pull_latest_from_table_or_query", **PULL)
    ref = duckdb.sql(f"""SELECT cc_num, avg_amt_1d, txn_count_1d FROM {src} WHERE {window}
                         QUALIFY row_number() OVER (PARTITION BY cc_num ORDER BY event_timestamp DESC, created_timestamp DESC) = 1
                         ORDER BY cc_num""").fetchall()
    got_rows = sorted(zip(*(latest.column(c).to_pylist() for c in ["cc_num", "avg_amt_1d", "txn_count_1d"])))
    assert got_rows == ref


def test_columns_and_validation_of_a_data_source(own):
    _, location = own
    proto = json.dumps({"name": "card_stats_src", "type": "BATCH_FILE"})
    cols = exchange(location, "get_table_column_names_and_types_from_data_source", data_source_proto=proto)
    types = dict(zip(cols.column("name").to_pylist(), cols.column("type").to_pylist()))
    assert types["cc_num"] == "int64" and types["avg_amt_1d"] == "double", types
    assert types["event_timestamp"].startswith("timestamp["), types
    put(location, "validate_data_source", data_source_proto=proto)
    with pytest.raises((flight.FlightError, KeyError)) as e:  # NOT_FOUND is a KeyError in pyarrow
        put(location, "validate_data_source", data_source_proto=json.dumps({"name": "nope_source"}))
    detail = feast_detail(e.value)
    assert detail["module"] == "feast.errors" and "nope_source" in detail["message"], detail


def test_offline_write_batch_adds_rows_checked_like_a_push(own):
    d, location = own
    count = lambda: flight.FlightClient(location).do_get(flight.Ticket(json.dumps({"get_historical_features": {
        "features": ["card_txn_windows:txn_count_5m"], "entity_sql": "SELECT cc_num, event_timestamp FROM transactions"}}).encode())).read_all().num_rows
    before = count()
    rows = pa.table({
        "trans_id": ["w1", "w2"], "cc_num": pa.array([4000000000000001, 4000000000000002], pa.int64()),
        "merchant_id": pa.array([3, 4], pa.int64()), "amt": [12.5, 7.0], "lat": [40.0, 41.0], "lon": [-74.0, -73.0],
        "event_timestamp": pa.array([1767484800000000, 1767484801000000], pa.timestamp("us", tz="UTC")),
        "is_fraud": pa.array([None, None], pa.bool_()),
    })
    # A table missing a column changes nothing and says which.
    with pytest.raises((flight.FlightError, ValueError)) as e:  # INVALID_ARGUMENT is ArrowInvalid
        put(location, "offline_write_batch", rows.drop_columns(["amt"]),
            feature_view_names=["card_txn_windows"], progress=None, name_aliases=[None])
    assert "amt" in feast_detail(e.value)["message"]
    assert count() == before
    put(location, "offline_write_batch", rows, feature_view_names=["card_txn_windows"], progress=None, name_aliases=[None])
    assert count() == before + 2
    # Unknown calls are refused in Feast's shape, never UNAVAILABLE (Feast would retry).
    with pytest.raises((flight.FlightError, NotImplementedError)) as e:
        exchange(location, "write_logged_features")
    assert not isinstance(e.value, flight.FlightUnavailableError)
    assert "write_logged_features" in feast_detail(e.value)["message"]
