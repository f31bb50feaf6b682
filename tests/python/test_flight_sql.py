"""Flight SQL over the offline store with the ADBC driver, as a notebook or a BI
tool connects: the catalog (sources and feature views), queries equal to DuckDB's
over the same Parquet files, a hand-written point-in-time join equal to the native
training-set call, and an endpoint that only reads."""
import re

import adbc_driver_flightsql.dbapi as flight_sql
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from test_historical import exchange

SOURCES = {"transactions", "card_stats_src", "merchant_stats_src", "customers_src", "chargebacks_src"}
# Feature views and the label view, each: join keys, event timestamp, created
# timestamp (if the source has one), then the features as stored offline.
VIEW_COLUMNS = {
    "card_stats": ["cc_num", "event_timestamp", "created_timestamp", "avg_amt_1d", "txn_count_1d", "max_amt_1d"],
    "merchant_stats": ["merchant_id", "event_timestamp", "created_timestamp", "merchant_avg_amt_1d", "merchant_txn_count_1d"],
    "customers": ["cc_num", "event_timestamp", "home_lat", "home_lon", "credit_limit"],
    "chargebacks": ["trans_id", "label_timestamp", "is_fraud"],
}
SOURCE_FILES = {
    "transactions": "transactions/*.parquet",
    "card_stats_src": "card_stats.parquet",
    "merchant_stats_src": "merchant_stats.parquet",
    "customers_src": "customers.parquet",
    "chargebacks_src": "chargebacks.parquet",
}
READ_ONLY = re.compile(r"read[- ]only|not allowed", re.IGNORECASE)


@pytest.fixture(scope="module")
def conn(sql_server):
    c = flight_sql.connect(f"grpc://{sql_server['sql']}", autocommit=True)
    yield c
    c.close()


@pytest.fixture(scope="module")
def duck(repo):
    """DuckDB over the same Parquet files, named as Quiver names them."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    data = repo / "data"
    for name, files in SOURCE_FILES.items():
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{data}/{files}')")
    con.execute("CREATE SCHEMA feature_views")
    con.execute(f"CREATE VIEW feature_views.card_stats AS SELECT * FROM read_parquet('{data}/card_stats.parquet')")
    return con


def query(conn, sql):
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetch_arrow_table()


def close(g, w):
    if isinstance(g, float) and isinstance(w, float):
        return abs(g - w) <= 1e-9 * max(abs(g), abs(w), 1.0)
    return g == w


def assert_rows_equal(got, want, what):
    """Row-by-row equality of two Arrow tables (floats within 1e-9: the engines sum
    in different orders); timestamps compare as instants whatever the zone name."""
    assert got.column_names == want.column_names, f"{what}: columns {got.column_names} vs DuckDB's {want.column_names}"
    assert got.num_rows == want.num_rows, f"{what}: {got.num_rows} rows vs DuckDB's {want.num_rows}"
    for i, (g, w) in enumerate(zip(got.to_pylist(), want.to_pylist())):
        for k in g:
            assert close(g[k], w[k]), f"{what}: row {i} column {k}: quiver {g[k]!r}, DuckDB {w[k]!r}"


def tables_by_schema(conn, **filters):
    """{(catalog, db_schema): {table: (table_type, [column names in order])}} from
    ADBC's get_objects."""
    out = {}
    for cat in conn.adbc_get_objects(depth="all", **filters).read_all().to_pylist():
        for s in cat["catalog_db_schemas"] or []:
            tables = out.setdefault((cat["catalog_name"], s["db_schema_name"]), {})
            for t in s["db_schema_tables"] or []:
                cols = sorted(t["table_columns"] or [], key=lambda c: c["ordinal_position"] or 0)
                tables[t["table_name"]] = (t["table_type"], [c["column_name"] for c in cols])
    return out


def test_get_objects_lists_sources_and_feature_views(repo, conn):
    catalogs = [c["catalog_name"] for c in conn.adbc_get_objects(depth="catalogs").read_all().to_pylist()]
    assert catalogs == ["quiver"], f"catalogs: {catalogs}"
    objs = tables_by_schema(conn)
    assert set(objs) == {("quiver", "sources"), ("quiver", "feature_views")}, f"db schemas: {sorted(objs)}"
    sources, views = objs[("quiver", "sources")], objs[("quiver", "feature_views")]
    assert set(sources) == SOURCES, f"tables of schema sources: {sorted(sources)}"
    assert set(views) == set(VIEW_COLUMNS) | {"card_txn_windows"}, f"tables of schema feature_views: {sorted(views)}"
    assert {t for t, _ in sources.values()} == {"TABLE"}, sources
    assert {t for t, _ in views.values()} == {"VIEW"}, views
    # A source's columns are its Parquet columns.
    data = repo / "data"
    assert sources["transactions"][1] == pq.read_schema(data / "transactions" / "part-00000.parquet").names
    assert sources["card_stats_src"][1] == pq.read_schema(data / "card_stats.parquet").names
    for view, columns in VIEW_COLUMNS.items():
        assert views[view][1] == columns, f"columns of feature_views.{view}"
    # An aggregation view: join keys, timestamp, the aggregated source columns.
    windows = views["card_txn_windows"][1]
    assert windows[:2] == ["cc_num", "event_timestamp"] and sorted(windows[2:]) == ["amt", "merchant_id"], windows
    # The server applies the filters (LIKE patterns) ADBC sends.
    only_views = tables_by_schema(conn, db_schema_filter="feature_views", table_name_filter="card%")
    assert {k: set(v) for k, v in only_views.items()} == {("quiver", "feature_views"): {"card_stats", "card_txn_windows"}}, only_views


def test_table_types_and_schemas(repo, conn):
    types = conn.adbc_get_table_types()
    assert {"TABLE", "VIEW"} <= set(types), types
    schema = conn.adbc_get_table_schema("card_stats", db_schema_filter="feature_views")
    assert schema.names == VIEW_COLUMNS["card_stats"], schema
    assert schema.field("cc_num").type == pa.int64()
    assert pa.types.is_timestamp(schema.field("event_timestamp").type), schema.field("event_timestamp")
    assert pa.types.is_timestamp(schema.field("created_timestamp").type), schema.field("created_timestamp")
    assert schema.field("avg_amt_1d").type == pa.float64()
    assert schema.field("txn_count_1d").type == pa.int64()
    # A source's schema is its Parquet schema (strings may come as any string type).
    tx = conn.adbc_get_table_schema("transactions", db_schema_filter="sources")
    want = pq.read_schema(repo / "data" / "transactions" / "part-00000.parquet")
    assert tx.names == want.names, tx
    for f in want:
        got = tx.field(f.name).type
        if pa.types.is_string(f.type):
            assert pa.types.is_string(got) or pa.types.is_large_string(got) or pa.types.is_string_view(got), (f.name, got)
        else:
            assert got == f.type, f"transactions.{f.name}: {got} vs Parquet {f.type}"


QUERIES = {
    "totals": """SELECT count(*) AS n, sum(amt) AS total, min(event_timestamp) AS first_at,
                        max(event_timestamp) AS last_at, count(DISTINCT cc_num) AS cards
                 FROM transactions""",
    "grouped": """SELECT merchant_id, count(*) AS n, sum(amt) AS total, max(amt) AS top
                  FROM transactions GROUP BY merchant_id ORDER BY merchant_id""",
    "ordered": """SELECT trans_id, cc_num, amt, event_timestamp, is_fraud FROM transactions
                  WHERE amt > 100 ORDER BY event_timestamp DESC, trans_id LIMIT 500""",
    "join": """SELECT cu.credit_limit, count(*) AS n, sum(t.amt) AS total
               FROM transactions t JOIN customers_src cu ON t.cc_num = cu.cc_num
               GROUP BY cu.credit_limit ORDER BY cu.credit_limit""",
    "view": """SELECT count(*) AS n, count(DISTINCT cc_num) AS cards, max(created_timestamp) AS newest
               FROM feature_views.card_stats""",
}


@pytest.mark.parametrize("name", list(QUERIES))
def test_query_equals_duckdb(conn, duck, name):
    got = query(conn, QUERIES[name])
    want = duck.sql(QUERIES[name]).to_arrow_table()
    assert got.num_rows > 0, f"{name}: no rows"
    assert_rows_equal(got, want, name)


def test_fully_qualified_names_and_pandas(conn, duck):
    # catalog.schema.table works as well as the default schema (sources).
    n = query(conn, "SELECT count(*) AS n FROM quiver.feature_views.card_stats").column("n").to_pylist()
    assert n == list(duck.sql("SELECT count(*) FROM feature_views.card_stats").fetchall()[0]), "feature_views.card_stats holds every stored row"
    n = query(conn, "SELECT count(*) AS n FROM quiver.sources.customers_src").column("n").to_pylist()
    assert n == list(duck.sql("SELECT count(*) FROM customers_src").fetchall()[0])
    sql = "SELECT merchant_id, count(*) AS n FROM transactions GROUP BY merchant_id ORDER BY merchant_id"
    with conn.cursor() as cur:
        cur.execute(sql)
        assert [d[0] for d in cur.description] == ["merchant_id", "n"], cur.description
        df = cur.fetch_df()
    want = duck.sql(sql).to_arrow_table()
    assert list(df.columns) == ["merchant_id", "n"]
    assert df["merchant_id"].tolist() == want.column("merchant_id").to_pylist()
    assert df["n"].tolist() == want.column("n").to_pylist()


def test_prepared_statement_executes_twice(conn, duck):
    sql = "SELECT cc_num, count(*) AS n FROM transactions GROUP BY cc_num ORDER BY n DESC, cc_num LIMIT 5"
    with conn.cursor() as cur:
        # ADBC prepares first (CreatePreparedStatement); a query without
        # placeholders has an empty parameter schema.
        params = cur.adbc_prepare(sql)
        assert params is not None and len(params) == 0, f"the prepared statement's parameter schema: {params!r}"
        cur.execute(sql)
        first = cur.fetch_arrow_table()
        cur.execute(sql)  # the same handle, executed again
        second = cur.fetch_arrow_table()
    assert first.num_rows == 5
    assert first.equals(second), f"a second execution differs: {first.to_pylist()} vs {second.to_pylist()}"
    assert_rows_equal(first, duck.sql(sql).to_arrow_table(), "prepared")


# 50 transactions, each looked up at four instants: its own time; midnight of its
# day (a card_stats row lies exactly on the spine time: `<=` includes it);
# midnight two days later (a row exactly 2 days old: the ttl bound includes it);
# 60 days later (past the data: outside the ttl, null).
SPINE = """
base AS (SELECT trans_id, cc_num, event_timestamp FROM transactions ORDER BY trans_id LIMIT 50),
spine AS (
  SELECT concat(trans_id, '/0') AS rid, cc_num, event_timestamp FROM base
  UNION ALL SELECT concat(trans_id, '/midnight'), cc_num, date_trunc('day', event_timestamp) FROM base
  UNION ALL SELECT concat(trans_id, '/midnight+2d'), cc_num, date_trunc('day', event_timestamp) + INTERVAL '2 days' FROM base
  UNION ALL SELECT concat(trans_id, '/+60d'), cc_num, event_timestamp + INTERVAL '60 days' FROM base
)"""

# The point-in-time rule of test_historical.py's DuckDB reference, by hand: per
# spine row, the card_stats row with spine - 2 days <= event_timestamp <= spine
# (ttl 2d, both ends included) with the greatest event_timestamp, ties broken by
# the greatest created_timestamp; none gives nulls.
PIT = f"""
WITH {SPINE},
candidates AS (
  SELECT s.rid, c.avg_amt_1d, c.txn_count_1d,
         row_number() OVER (PARTITION BY s.rid ORDER BY c.event_timestamp DESC, c.created_timestamp DESC) AS rn
  FROM spine s JOIN feature_views.card_stats c
    ON c.cc_num = s.cc_num
   AND c.event_timestamp <= s.event_timestamp
   AND c.event_timestamp >= s.event_timestamp - INTERVAL '2 days'
)
SELECT s.rid, s.cc_num, s.event_timestamp, candidates.avg_amt_1d, candidates.txn_count_1d
FROM spine s LEFT JOIN candidates ON candidates.rid = s.rid AND candidates.rn = 1
ORDER BY s.rid
"""


def test_point_in_time_join_in_sql_equals_get_historical_features(conn, duck, sql_server):
    sql = query(conn, PIT)
    assert sql.num_rows == 200, f"the spine has 200 rows, the join returned {sql.num_rows}"
    rids = sql.column("rid").to_pylist()
    assert len(set(rids)) == 200, "trans_id is unique, so rid is"
    # The same SQL in DuckDB: the hand-written join is right.
    assert_rows_equal(sql, duck.sql(PIT).to_arrow_table(), "point-in-time SQL")
    # The same spine through the native training-set call.
    rows = query(conn, f"WITH {SPINE} SELECT rid, cc_num, event_timestamp FROM spine ORDER BY rid")
    spine = pa.table({
        "rid": pa.array(rows.column("rid").to_pylist(), pa.string()),
        "cc_num": pa.array(rows.column("cc_num").to_pylist(), pa.int64()),
        "event_timestamp": rows.column("event_timestamp").cast(pa.timestamp("us", tz="UTC")),
    })
    native = exchange(sql_server["flight"],
                      {"get_historical_features": {"features": ["card_stats:avg_amt_1d", "card_stats:txn_count_1d"]}}, spine)
    assert native.column_names == ["rid", "cc_num", "event_timestamp", "avg_amt_1d", "txn_count_1d"]
    assert native.column("rid").to_pylist() == rids
    for name in ("avg_amt_1d", "txn_count_1d"):
        got, want = sql.column(name).to_pylist(), native.column(name).to_pylist()
        for rid, g, w in zip(rids, got, want):
            assert g == w, f"{name} at {rid}: Flight SQL join {g!r}, get_historical_features {w!r}"
    counts = sql.column("txn_count_1d").to_pylist()
    assert all(c is None for r, c in zip(rids, counts) if r.endswith("/+60d")), "60 days on, every row is outside the ttl"
    assert sum(c is not None for c in counts) >= 100, "most lookups find a row"


def test_writes_and_file_reads_are_refused(repo, conn, duck, tmp_path):
    copy_to = tmp_path / "copy.parquet"
    refused = [
        "CREATE TABLE t AS SELECT 1 AS x",
        "CREATE TABLE t2 (x INT)",
        "CREATE VIEW v AS SELECT * FROM transactions",
        "INSERT INTO transactions SELECT * FROM transactions LIMIT 1",
        f"COPY (SELECT * FROM transactions LIMIT 5) TO '{copy_to}' STORED AS PARQUET",
        f"CREATE EXTERNAL TABLE leak STORED AS PARQUET LOCATION '{repo / 'data' / 'card_stats.parquet'}'",
        "DROP TABLE transactions",
        "DROP VIEW feature_views.card_stats",
    ]
    for sql in refused:
        with conn.cursor() as cur:
            try:
                cur.execute(sql)
                cur.fetch_arrow_table()
            except flight_sql.Error as e:
                assert READ_ONLY.search(str(e)), f"{sql!r} was refused, but the message does not say it is read-only: {e}"
            else:
                pytest.fail(f"{sql!r} was accepted by a read-only endpoint")
    # No URL tables: a path in FROM is not a table.
    for sql in ["SELECT * FROM '/etc/passwd'",
                f"SELECT * FROM '{repo / 'data' / 'card_stats.parquet'}'",
                f"SELECT count(*) FROM '{repo / 'data' / 'transactions'}/'"]:
        with conn.cursor() as cur:
            with pytest.raises(flight_sql.Error, match=r"(?i)not found") as e:
                cur.execute(sql)
                cur.fetch_arrow_table()
            assert "root:" not in str(e.value), "no file content in the error"
    assert not copy_to.exists(), "COPY wrote a file"
    # Still answering, with nothing created or dropped.
    n = query(conn, "SELECT count(*) AS n FROM transactions").column("n").to_pylist()
    assert n == list(duck.sql("SELECT count(*) FROM transactions").fetchall()[0])
    objs = tables_by_schema(conn)
    assert set(objs[("quiver", "sources")]) == SOURCES, objs
    assert set(objs[("quiver", "feature_views")]) == set(VIEW_COLUMNS) | {"card_txn_windows"}, objs
