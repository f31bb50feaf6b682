"""Online lookups with plain pyarrow.flight: materialize through a Flight action,
then DoGet (the documented ticket) and DoExchange, checked against DuckDB's
latest-row-per-entity on the same Parquet files."""
import json
from datetime import datetime

import duckdb
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from conftest import ONLINE_NOW, action

CARD_FEATURES = ["avg_amt_1d", "txn_count_1d", "max_amt_1d", "home_lat", "home_lon", "credit_limit"]


def do_get(client, command):
    return client.do_get(flight.Ticket(json.dumps(command).encode())).read_all()


@pytest.fixture(scope="module")
def materialized(online_server):
    client = flight.FlightClient(online_server)
    reports = action(client, "materialize", {"start": "2025-01-01T00:00:00Z", "end": ONLINE_NOW})
    assert sorted(r["view"] for r in reports) == ["card_stats", "card_txn_windows", "customers", "merchant_stats"]
    assert all(r["rows_read"] > 0 and r["keys_written"] > 0 for r in reports)
    return client


def duckdb_latest(data, cards):
    con = duckdb.connect()
    con.register("cards", pa.table({"cc_num": pa.array(cards, pa.int64()), "pos": pa.array(range(len(cards)), pa.int64())}))
    now = datetime.fromisoformat(ONLINE_NOW)
    return con.sql(
        f"""
        WITH cs AS (SELECT * FROM read_parquet('{data}/card_stats.parquet') WHERE event_timestamp <= $now
                    QUALIFY row_number() OVER (PARTITION BY cc_num ORDER BY event_timestamp DESC, created_timestamp DESC) = 1),
             cu AS (SELECT * FROM read_parquet('{data}/customers.parquet') WHERE event_timestamp <= $now
                    QUALIFY row_number() OVER (PARTITION BY cc_num ORDER BY event_timestamp DESC) = 1)
        SELECT c.cc_num,
               CASE WHEN cs.event_timestamp >= $now - INTERVAL 2 DAY THEN cs.avg_amt_1d END AS avg_amt_1d,
               CASE WHEN cs.event_timestamp >= $now - INTERVAL 2 DAY THEN cs.txn_count_1d END AS txn_count_1d,
               CASE WHEN cs.event_timestamp >= $now - INTERVAL 2 DAY THEN cs.max_amt_1d END AS max_amt_1d,
               cu.home_lat, cu.home_lon, cu.credit_limit,
               CASE WHEN cs.cc_num IS NULL THEN 'NOT_FOUND'
                    WHEN cs.event_timestamp < $now - INTERVAL 2 DAY THEN 'OUTSIDE_MAX_AGE'
                    WHEN cs.avg_amt_1d IS NULL AND cs.txn_count_1d IS NULL AND cs.max_amt_1d IS NULL THEN 'NULL_VALUE'
                    ELSE 'PRESENT' END AS card_stats__status
        FROM cards c LEFT JOIN cs USING (cc_num) LEFT JOIN cu USING (cc_num)
        ORDER BY c.pos
        """,
        params={"now": now},
    ).to_arrow_table()


def test_do_get_equals_latest_rows(repo, materialized):
    cards = [4000000000000000 + i for i in range(0, 2000, 3)] + [4000000000000005, 17]
    ticket = {"get_online_features": {"feature_service": "fraud_v1", "entities": {"cc_num": cards}, "include_metadata": True}}
    table = do_get(materialized, ticket)
    assert table.column_names[:7] == ["cc_num"] + CARD_FEATURES
    assert table.column("cc_num").to_pylist() == cards
    want = duckdb_latest(repo / "data", cards)
    for f in CARD_FEATURES + ["card_stats__status"]:
        assert table.column(f).to_pylist() == want.column(f).to_pylist(), f
    statuses = set(table.column("card_stats__status").to_pylist())
    assert {"PRESENT", "OUTSIDE_MAX_AGE", "NOT_FOUND"} <= statuses


def test_the_documented_ticket(materialized):
    ticket = {"get_online_features": {"feature_service": "fraud_v1", "entities": {"cc_num": [4000000000000005]}}}
    table = do_get(materialized, ticket)
    assert table.num_rows == 1
    assert table.column_names == ["cc_num"] + CARD_FEATURES
    full = do_get(materialized, {"get_online_features": {"features": ["card_stats:avg_amt_1d"], "full_feature_names": True,
                                                         "entities": {"cc_num": [4000000000000005]}}})
    assert full.column_names == ["cc_num", "card_stats__avg_amt_1d"]


def test_do_exchange_answers_each_batch_in_order(repo, materialized):
    descriptor = flight.FlightDescriptor.for_command(json.dumps({"get_online_features": {"feature_service": "fraud_v2"}}).encode())
    writer, reader = materialized.do_exchange(descriptor)
    schema = pa.schema([("cc_num", pa.int64()), ("merchant_id", pa.int64()), ("trans_id", pa.string())])
    writer.begin(schema)
    direct = do_get(materialized, {"get_online_features": {"feature_service": "fraud_v2",
                                                           "entities": {"cc_num": [4000000000000000 + i for i in range(50)],
                                                                        "merchant_id": [i % 40 for i in range(50)]}}})
    got = []
    for start in (0, 1, 10, 30):  # batches of 1, 9, 20 and 20 rows, one answer each
        end = {0: 1, 1: 10, 10: 30, 30: 50}[start]
        batch = pa.record_batch([pa.array([4000000000000000 + i for i in range(start, end)], pa.int64()),
                                 pa.array([i % 40 for i in range(start, end)], pa.int64()),
                                 pa.array([f"t{i}" for i in range(start, end)])], schema=schema)
        writer.write_batch(batch)
        answer = reader.read_chunk().data
        assert answer.num_rows == end - start
        assert answer.column(2).to_pylist() == [f"t{i}" for i in range(start, end)], "input columns come back first"
        got.append(answer)
    writer.done_writing()
    writer.close()
    table = pa.Table.from_batches(got)
    for f in CARD_FEATURES + ["merchant_avg_amt_1d"]:
        assert table.column(f).to_pylist() == direct.column(f).to_pylist(), f


def test_bad_lookups_are_clear_errors(materialized):
    with pytest.raises(pa.ArrowInvalid, match='missing entity column "merchant_id"'):
        do_get(materialized, {"get_online_features": {"feature_service": "fraud_v2", "entities": {"cc_num": [1]}}})
    with pytest.raises(pa.ArrowKeyError, match='feature service "nope" not found'):
        do_get(materialized, {"get_online_features": {"feature_service": "nope", "entities": {"cc_num": [1]}}})
    with pytest.raises(pa.ArrowInvalid, match="is not an integer"):
        do_get(materialized, {"get_online_features": {"feature_service": "fraud_v1", "entities": {"cc_num": ["abc"]}}})
    status = action(materialized, "status", {})
    assert {s["view"] for s in status} == {"card_stats", "card_txn_windows", "customers", "merchant_stats"}
    assert all(s["watermark"].startswith("2026-02-10T12:00:00") for s in status)
