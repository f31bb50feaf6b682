"""A training set pulled with plain pyarrow.flight equals DuckDB's ASOF LEFT JOIN
(plus the ttl bound and the created-timestamp tie-break) on the same files."""
import json
import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.flight as flight
import pyarrow.parquet as pq
import pytest

FEATURES = ["avg_amt_1d", "txn_count_1d", "max_amt_1d", "home_lat", "home_lon", "credit_limit", "merchant_avg_amt_1d"]


def exchange(server, command, table, chunk=5000):
    client = flight.FlightClient(server)
    descriptor = flight.FlightDescriptor.for_command(json.dumps(command).encode())
    writer, reader = client.do_exchange(descriptor)
    # The usual pattern: write the whole spine, then read.
    writer.begin(table.schema)
    writer.write_table(table, max_chunksize=chunk)
    writer.done_writing()
    result = reader.read_all()
    writer.close()
    return result


def duckdb_reference(data, spine):
    con = duckdb.connect()
    con.register("spine", spine)
    return con.sql(
        f"""
        WITH cs AS (SELECT * FROM read_parquet('{data}/card_stats.parquet')
                    QUALIFY row_number() OVER (PARTITION BY cc_num, event_timestamp ORDER BY created_timestamp DESC) = 1),
             ms AS (SELECT * FROM read_parquet('{data}/merchant_stats.parquet')
                    QUALIFY row_number() OVER (PARTITION BY merchant_id, event_timestamp ORDER BY created_timestamp DESC) = 1),
             cu AS (SELECT * FROM read_parquet('{data}/customers.parquet'))
        SELECT s.rid,
               CASE WHEN cs.event_timestamp >= s.event_timestamp - INTERVAL 2 DAY THEN cs.avg_amt_1d END AS avg_amt_1d,
               CASE WHEN cs.event_timestamp >= s.event_timestamp - INTERVAL 2 DAY THEN cs.txn_count_1d END AS txn_count_1d,
               CASE WHEN cs.event_timestamp >= s.event_timestamp - INTERVAL 2 DAY THEN cs.max_amt_1d END AS max_amt_1d,
               cu.home_lat, cu.home_lon, cu.credit_limit,
               CASE WHEN ms.event_timestamp >= s.event_timestamp - INTERVAL 2 DAY THEN ms.merchant_avg_amt_1d END AS merchant_avg_amt_1d
        FROM spine s
        ASOF LEFT JOIN cs ON s.cc_num = cs.cc_num AND s.event_timestamp >= cs.event_timestamp
        ASOF LEFT JOIN cu ON s.cc_num = cu.cc_num AND s.event_timestamp >= cu.event_timestamp
        ASOF LEFT JOIN ms ON s.merchant_id = ms.merchant_id AND s.event_timestamp >= ms.event_timestamp
        ORDER BY s.rid
        """
    ).to_arrow_table()


def test_training_set_equals_duckdb_asof(repo, server):
    tx = pq.read_table(repo / "data" / "transactions" / "part-00000.parquet")
    spine = tx.select(["trans_id", "cc_num", "merchant_id", "event_timestamp", "is_fraud"])
    spine = spine.append_column("rid", pa.array(range(spine.num_rows), pa.int64()))
    result = exchange(server, {"get_historical_features": {"feature_service": "fraud_v2"}}, spine)
    assert result.num_rows == spine.num_rows
    # Spine columns unchanged, in order, then the features.
    assert result.column_names == spine.column_names + FEATURES
    assert result.select(spine.column_names).equals(spine)
    ref = duckdb_reference(repo / "data", spine)
    assert ref.column("rid").to_pylist() == list(range(spine.num_rows))
    mismatches = 0
    for name in FEATURES:
        got, want = result.column(name).to_pylist(), ref.column(name).to_pylist()
        for i, (g, w) in enumerate(zip(got, want)):
            if g != w:  # both read the same stored values: exact equality
                mismatches += 1
                assert mismatches < 5, f"{name} row {i}: quiver {g!r} duckdb {w!r}"
    assert mismatches == 0
    # Both outcomes occur: values found and values outside the ttl.
    assert 0 < pc.sum(pc.is_null(result.column("avg_amt_1d"))).as_py() < spine.num_rows


def test_full_feature_names_and_small_chunks(repo, server):
    tx = pq.read_table(repo / "data" / "transactions" / "part-00000.parquet").slice(0, 3000)
    spine = tx.select(["cc_num", "event_timestamp"])
    cmd = {"get_historical_features": {"features": ["card_stats:avg_amt_1d", "customers"], "full_feature_names": True}}
    result = exchange(server, cmd, spine, chunk=7)
    assert result.column_names == ["cc_num", "event_timestamp", "card_stats__avg_amt_1d", "customers__home_lat", "customers__home_lon", "customers__credit_limit"]
    assert result.num_rows == 3000


def test_errors_are_flight_errors_with_a_message(repo, server):
    spine = pa.table({"cc_num": pa.array([1], pa.int64()), "event_timestamp": pa.array([0], pa.timestamp("us"))})
    # NOT_FOUND surfaces in pyarrow as ArrowKeyError, INVALID_ARGUMENT as ArrowInvalid.
    with pytest.raises(pa.ArrowKeyError, match='feature view "nope" not found'):
        exchange(server, {"get_historical_features": {"features": ["nope:x"]}}, spine)
    with pytest.raises(pa.ArrowInvalid, match="malformed command"):
        client = flight.FlightClient(server)
        writer, reader = client.do_exchange(flight.FlightDescriptor.for_command(b"{oops"))
        writer.begin(spine.schema)
        writer.write_table(spine)
        writer.done_writing()
        reader.read_all()
    # Still serving.
    assert exchange(server, {"get_historical_features": {"feature_service": "fraud_v1"}}, spine.append_column("merchant_id", pa.array([1], pa.int64()))).num_rows == 1


def test_list_flights_and_get_schema(server):
    client = flight.FlightClient(server)
    infos = list(client.list_flights())
    meta = [json.loads(i.descriptor.command) for i in infos]
    assert {"get_historical_features": {"feature_service": "fraud_v1", "full_feature_names": True}} in meta
    schema = client.get_schema(flight.FlightDescriptor.for_path("fraud_v1")).schema
    assert "card_stats__avg_amt_1d" in schema.names and "cc_num" in schema.names


def test_entity_sql_via_get_flight_info(server):
    client = flight.FlightClient(server)
    cmd = {"get_historical_features": {"feature_service": "fraud_v1",
                                       "entity_sql": "SELECT cc_num, merchant_id, event_timestamp FROM transactions ORDER BY event_timestamp LIMIT 500"}}
    info = client.get_flight_info(flight.FlightDescriptor.for_command(json.dumps(cmd).encode()))
    table = client.do_get(info.endpoints[0].ticket).read_all()
    assert table.num_rows == 500
    assert table.schema.names[:3] == ["cc_num", "merchant_id", "event_timestamp"]
    assert info.schema.names == table.schema.names
