"""Rolling-window features pulled with plain pyarrow.flight equal DuckDB's window
aggregates over the same Parquet files (a range join with the exclusive start
`t - w < ts <= t`), and rows pushed with pyarrow's DoPut are visible to the next
lookup."""
import json
import random
from datetime import datetime, timedelta

import duckdb
import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq
import pytest

from conftest import ONLINE_NOW
from test_historical import exchange

WINDOWS = ["txn_count_5m", "amt_sum_1h", "amt_avg_1d", "amt_max_1d", "amt_min_1h", "merchants_1h"]


def duckdb_windows(data, spine):
    con = duckdb.connect()
    con.register("spine", spine)
    return con.sql(
        f"""
        SELECT s.rid,
          count(t.amt) FILTER (WHERE t.event_timestamp > s.event_timestamp - INTERVAL 5 MINUTE) AS txn_count_5m,
          sum(t.amt) FILTER (WHERE t.event_timestamp > s.event_timestamp - INTERVAL 1 HOUR) AS amt_sum_1h,
          avg(t.amt) AS amt_avg_1d,
          max(t.amt) AS amt_max_1d,
          min(t.amt) FILTER (WHERE t.event_timestamp > s.event_timestamp - INTERVAL 1 HOUR) AS amt_min_1h,
          count(DISTINCT t.merchant_id) FILTER (WHERE t.event_timestamp > s.event_timestamp - INTERVAL 1 HOUR) AS merchants_1h
        FROM spine s
        LEFT JOIN read_parquet('{data}/transactions/*.parquet') t
          ON t.cc_num = s.cc_num
         AND t.event_timestamp > s.event_timestamp - INTERVAL 1 DAY
         AND t.event_timestamp <= s.event_timestamp
        GROUP BY s.rid
        ORDER BY s.rid
        """
    ).to_arrow_table()


def close(g, w):
    if g is None or w is None:
        return g is None and w is None
    if isinstance(g, float) or isinstance(w, float):
        return abs(g - w) <= 1e-9 * max(abs(g), abs(w), 1.0)
    return g == w


def test_training_windows_equal_duckdb(repo, server):
    tx = pq.read_table(repo / "data" / "transactions" / "part-00000.parquet")
    rng = random.Random(11)
    rows = rng.sample(range(tx.num_rows), 3000)
    cards = tx.column("cc_num").to_pylist()
    times = tx.column("event_timestamp").to_pylist()
    spine_cards, spine_ts = [], []
    for k, i in enumerate(rows):
        t = times[i]
        # On an event (its own time is in its windows), a microsecond before one,
        # or somewhere in the next two hours.
        t = [t, t - timedelta(microseconds=1), t + timedelta(seconds=rng.randrange(7200))][k % 3]
        spine_cards.append(cards[i])
        spine_ts.append(t)
    spine = pa.table({
        "cc_num": pa.array(spine_cards, pa.int64()),
        "event_timestamp": pa.array(spine_ts, pa.timestamp("us", tz="UTC")),
        "rid": pa.array(range(len(rows)), pa.int64()),
    })
    result = exchange(server, {"get_historical_features": {"features": ["card_txn_windows"]}}, spine)
    assert result.column_names == spine.column_names + WINDOWS
    assert result.select(spine.column_names).equals(spine)
    assert result.schema.field("txn_count_5m").type == pa.int64()
    assert result.schema.field("amt_sum_1h").type == pa.float64()
    ref = duckdb_windows(repo / "data", spine)
    assert ref.column("rid").to_pylist() == list(range(len(rows)))
    nonzero = sum(1 for v in result.column("txn_count_5m").to_pylist() if v)
    assert nonzero > 500, "the spine hits events"
    for name in WINDOWS:
        for i, (g, w) in enumerate(zip(result.column(name).to_pylist(), ref.column(name).to_pylist())):
            assert close(g, w), f"{name} row {i}: quiver {g!r} duckdb {w!r}"


def test_pyarrow_push_is_visible_to_the_next_lookup(online_server):
    client = flight.FlightClient(online_server)
    now = datetime.fromisoformat(ONLINE_NOW)
    card = 4_000_000_000_999_999  # not in the generated data
    rows = pa.table({
        "trans_id": pa.array(["p1", "p2", "p3"]),
        "cc_num": pa.array([card] * 3, pa.int64()),
        "merchant_id": pa.array([1, 2, 2], pa.int64()),
        "amt": pa.array([1.5, 2.5, 4.0]),
        "lat": pa.array([40.0] * 3),
        "lon": pa.array([-74.0] * 3),
        "event_timestamp": pa.array([now - timedelta(minutes=m) for m in (1, 2, 30)], pa.timestamp("us", tz="UTC")),
        "is_fraud": pa.array([None] * 3, pa.bool_()),
    })
    command = {"push": {"source": "transactions", "to": "online"}}
    writer, reader = client.do_put(flight.FlightDescriptor.for_command(json.dumps(command).encode()), rows.schema)
    writer.write_table(rows)
    writer.done_writing()
    result = json.loads(reader.read().to_pybytes())
    writer.close()
    assert result == {"rows": 3, "online_keys": 1, "offline_files": []}, result  # one card, one view
    ticket = {"get_online_features": {"features": ["card_txn_windows"], "entities": {"cc_num": [card, card + 1]}}}
    got = client.do_get(flight.Ticket(json.dumps(ticket).encode())).read_all().to_pylist()
    assert got[0]["txn_count_5m"] == 2
    assert got[0]["amt_sum_1h"] == 8.0
    assert got[0]["merchants_1h"] == 2
    # A card never pushed: count 0, the rest null.
    assert got[1]["txn_count_5m"] == 0 and got[1]["amt_sum_1h"] is None
    # A batch with a wrong type is refused whole, with the column named.
    bad = rows.set_column(rows.schema.get_field_index("amt"), "amt", pa.array(["x", "y", "z"]))
    with pytest.raises(pa.ArrowInvalid, match='column "amt" is Utf8, the source stores Float64'):
        writer, reader = client.do_put(flight.FlightDescriptor.for_command(json.dumps(command).encode()), bad.schema)
        writer.write_table(bad)
        writer.done_writing()
        reader.read()
        writer.close()
