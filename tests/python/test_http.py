"""The HTTP listener speaks Feast's feature-server JSON (stdlib urllib only, as any
HTTP client would): /health, /get-online-features answering what the native
DoGet answers on the same server, in Feast's column-major shape, /push visible to
the next lookup, and bad requests refused with a 4xx and a JSON body."""
import json
import urllib.error
import urllib.request
from datetime import datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.flight as flight

from conftest import ONLINE_NOW

CARD = "card_stats"
CARD_FEATURES = ["avg_amt_1d", "txn_count_1d", "max_amt_1d"]
CUSTOMER_FEATURES = ["home_lat", "home_lon", "credit_limit"]
FLOAT_FEATURES = {"avg_amt_1d", "max_amt_1d", "home_lat", "home_lon", "credit_limit", "merchant_avg_amt_1d",
                  "amt_sum_1h", "amt_avg_1d"}
INT_FEATURES = {"txn_count_1d", "txn_count_5m", "merchants_1h"}
STATUSES = {"PRESENT", "NULL_VALUE", "NOT_FOUND", "OUTSIDE_MAX_AGE"}
UNKNOWN_CARDS = [17, 4000000000999998]

# No proxy for loopback, whatever the environment says.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def call(base, path, body=None, raw=None, content_type="application/json"):
    """One request: GET without a body, else POST of `raw` bytes or `body` as JSON.
    Returns (status, body bytes) for any status."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(base + path, data=data, method="GET" if data is None else "POST")
    if data is not None and content_type:
        req.add_header("Content-Type", content_type)
    try:
        with OPENER.open(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def lookup(base, body):
    status, raw = call(base, "/get-online-features", body)
    assert status == 200, f"/get-online-features {body}: {status} {raw[:500]!r}"
    return columns(json.loads(raw))


def columns(resp):
    """Checks Feast's column-major response shape; returns {name: result} in order."""
    names = resp["metadata"]["feature_names"]
    results = resp["results"]
    assert len(results) == len(names), f"{len(results)} results for {len(names)} feature_names"
    rows = len(results[0]["values"]) if results else 0
    out = {}
    for name, r in zip(names, results):
        assert len(r["values"]) == rows and len(r["statuses"]) == rows and len(r["event_timestamps"]) == rows, \
            f"{name}: values, statuses and event_timestamps must each have one entry per entity row ({rows})"
        assert set(r["statuses"]) <= STATUSES, f"{name}: statuses {set(r['statuses'])}"
        out[name] = r
    return out


def do_get(location, command):
    return flight.FlightClient(location).do_get(flight.Ticket(json.dumps({"get_online_features": command}).encode())).read_all()


def feature_columns(table):
    return [n for n in table.column_names if not n.endswith("__status") and not n.endswith("__event_timestamp")]


def assert_values_typed(name, values):
    """Floats keep a decimal point in JSON (Feast's client infers types from it)."""
    for v in values:
        if v is None:
            continue
        if name in FLOAT_FEATURES:
            assert isinstance(v, float), f"{name}: {v!r} must be a JSON float"
        elif name in INT_FEATURES:
            assert isinstance(v, int) and not isinstance(v, bool), f"{name}: {v!r} must be a JSON integer"


def parse_ts(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def assert_same_as_native(http, native, keys, view_of):
    """The HTTP answer holds the native DoGet's columns, in order, with the same
    values; each feature's status is its view's status (a fresh row's null value
    may be PRESENT or NULL_VALUE); PRESENT values carry the view's event time."""
    assert list(http) == feature_columns(native), f"feature_names {list(http)} vs native columns {feature_columns(native)}"
    for name, r in http.items():
        want = native.column(name).to_pylist()
        assert r["values"] == want, f"{name}: HTTP {r['values'][:10]}... vs native {want[:10]}..."
        assert_values_typed(name, r["values"])
        if name in keys:
            assert set(r["statuses"]) == {"PRESENT"}, f"join key {name} statuses {set(r['statuses'])}"
            continue
        view = view_of(name)
        view_status = native.column(f"{view}__status").to_pylist()
        view_ts = pc.cast(native.column(f"{view}__event_timestamp"), pa.timestamp("us", tz="UTC"), safe=False).to_pylist()
        for i, (v, s, vs, ts, got_ts) in enumerate(zip(r["values"], r["statuses"], view_status, view_ts, r["event_timestamps"])):
            if vs in ("NOT_FOUND", "OUTSIDE_MAX_AGE"):
                assert s == vs, f"{name} row {i}: status {s}, its view's {vs}"
            elif v is not None:
                assert s == "PRESENT", f"{name} row {i}: status {s} for a fresh value {v!r}"
            else:
                assert s in ("PRESENT", "NULL_VALUE"), f"{name} row {i}: status {s} for a fresh null"
            if s == "PRESENT" and ts is not None:
                assert parse_ts(got_ts) == ts, f"{name} row {i}: event timestamp {got_ts!r}, the view's {ts}"


def card_or_customer(name):
    return CARD if name.removeprefix("card_stats__") in CARD_FEATURES else "customers"


def test_health(online_http):
    status, _ = call(online_http["http"], "/health")
    assert status == 200


def test_feature_service_lookup_equals_native_do_get(online_http):
    cards = [4000000000000000 + i for i in range(0, 2000, 5)] + UNKNOWN_CARDS + [4000000000000005]
    http = lookup(online_http["http"], {"feature_service": "fraud_v1", "entities": {"cc_num": cards}})
    native = do_get(online_http["flight"], {"feature_service": "fraud_v1", "entities": {"cc_num": cards}, "include_metadata": True})
    assert list(http) == ["cc_num"] + CARD_FEATURES + CUSTOMER_FEATURES
    assert http["cc_num"]["values"] == cards, "entity rows in request order"
    assert_same_as_native(http, native, {"cc_num"}, card_or_customer)
    statuses = set(http["avg_amt_1d"]["statuses"])
    assert {"PRESENT", "OUTSIDE_MAX_AGE", "NOT_FOUND"} <= statuses, statuses
    # Unknown keys: every feature null and NOT_FOUND.
    for i in (len(cards) - 3, len(cards) - 2):
        for name in CARD_FEATURES + CUSTOMER_FEATURES:
            assert http[name]["values"][i] is None, f"{name} of unknown card {cards[i]}"
            assert http[name]["statuses"][i] == "NOT_FOUND", f"{name} of unknown card {cards[i]}"


def test_feature_refs_full_names_and_two_keys(online_http):
    cards = [4000000000000005, 4000000000000006] + UNKNOWN_CARDS
    refs = ["card_stats:avg_amt_1d", "customers:credit_limit"]
    # What Feast's RemoteOnlineStore sends, extra field included.
    body = {"entities": {"cc_num": cards}, "full_feature_names": True, "include_feature_view_version_metadata": False,
            "features": refs}
    http = lookup(online_http["http"], body)
    assert list(http) == ["cc_num", "card_stats__avg_amt_1d", "customers__credit_limit"], list(http)
    native = do_get(online_http["flight"], {"features": refs, "entities": {"cc_num": cards}, "full_feature_names": True,
                                            "include_metadata": True})
    assert_same_as_native(http, native, {"cc_num"}, card_or_customer)
    short = lookup(online_http["http"], {"features": refs, "entities": {"cc_num": cards}})
    assert list(short) == ["cc_num", "avg_amt_1d", "credit_limit"], list(short)
    assert short["avg_amt_1d"]["values"] == http["card_stats__avg_amt_1d"]["values"]
    # Two join keys (fraud_v2 needs the merchant's too): keys first, in request order.
    merchants = [3, 4, 5, 6]
    http = lookup(online_http["http"], {"feature_service": "fraud_v2", "entities": {"cc_num": cards, "merchant_id": merchants}})
    native = do_get(online_http["flight"], {"feature_service": "fraud_v2", "entities": {"cc_num": cards, "merchant_id": merchants},
                                            "include_metadata": True})
    assert list(http)[:2] == ["cc_num", "merchant_id"], list(http)
    assert http["merchant_id"]["values"] == merchants
    assert_same_as_native(http, native, {"cc_num", "merchant_id"},
                          lambda n: "merchant_stats" if n == "merchant_avg_amt_1d" else card_or_customer(n))


def assert_refused(base, path, what, body=None, raw=None, mentions=None):
    status, text = call(base, path, body=body, raw=raw)
    assert 400 <= status < 500, f"{what}: status {status} {text[:300]!r}, expected 4xx"
    try:
        json.loads(text)
    except ValueError:
        raise AssertionError(f"{what}: the error body is not JSON: {text[:300]!r}")
    if mentions:
        assert mentions in text.decode(), f"{what}: the error does not name {mentions!r}: {text[:300]!r}"


def test_bad_requests_are_4xx_with_a_json_body(online_http):
    base = online_http["http"]
    lookups = [
        ("unknown feature view", {"features": ["nope:x"], "entities": {"cc_num": [1]}}, "nope"),
        ("unknown feature", {"features": ["card_stats:nope_feature"], "entities": {"cc_num": [1]}}, "nope_feature"),
        ("unknown feature service", {"feature_service": "nope_service", "entities": {"cc_num": [1]}}, "nope_service"),
        ("missing entities", {"features": ["card_stats:avg_amt_1d"]}, None),
        ("missing join key", {"feature_service": "fraud_v2", "entities": {"cc_num": [1]}}, "merchant_id"),
        ("wrong key type", {"feature_service": "fraud_v1", "entities": {"cc_num": ["abc"]}}, None),
        ("entity lists of different lengths", {"feature_service": "fraud_v2", "entities": {"cc_num": [1, 2], "merchant_id": [1]}}, None),
    ]
    for what, body, mentions in lookups:
        assert_refused(base, "/get-online-features", what, body=body, mentions=mentions)
    for what, raw in [("malformed JSON", b"{oops"), ("a JSON array", b"[1, 2]"), ("an empty body", b"")]:
        assert_refused(base, "/get-online-features", what, raw=raw)
    row = {"trans_id": ["bad"], "cc_num": [4000000000000001], "merchant_id": [1], "amt": [1.0], "lat": [40.0],
           "lon": [-74.0], "event_timestamp": ["2026-02-10T11:59:00Z"], "is_fraud": [None]}
    pushes = [
        ("unknown source", {"push_source_name": "nope_source", "df": row, "to": "online"}, "nope_source"),
        ("unknown destination", {"push_source_name": "transactions", "df": row, "to": "everywhere"}, None),
        ("wrong column type", {"push_source_name": "transactions", "df": dict(row, amt=["x"]), "to": "online"}, "amt"),
        ("bad timestamp", {"push_source_name": "transactions", "df": dict(row, event_timestamp=["yesterday"]), "to": "online"}, None),
        ("missing column", {"push_source_name": "transactions", "df": {k: v for k, v in row.items() if k != "cc_num"}, "to": "online"}, "cc_num"),
        # Exactly the source's columns: a nullable one left out would be written as nulls, an unknown one lost.
        ("nullable column left out", {"push_source_name": "transactions", "df": {k: v for k, v in row.items() if k != "is_fraud"}, "to": "online"}, "is_fraud"),
        ("unknown column", {"push_source_name": "transactions", "df": dict(row, nope_col=[1]), "to": "online"}, "nope_col"),
    ]
    for what, body, mentions in pushes:
        assert_refused(base, "/push", f"push: {what}", body=body, mentions=mentions)
    assert_refused(base, "/push", "push: malformed JSON", raw=b'{"push_source_name": ')
    # A view computed from events takes no written values.
    assert_refused(base, "/write-to-online-store", "write to an aggregation view",
                   body={"feature_view_name": "card_txn_windows", "df": {"cc_num": [1]}}, mentions="card_txn_windows")
    # Still serving.
    assert call(base, "/health")[0] == 200
    ok = lookup(base, {"feature_service": "fraud_v1", "entities": {"cc_num": [4000000000000005]}})
    assert ok["cc_num"]["values"] == [4000000000000005]


def test_body_is_json_whatever_the_content_type(online_http):
    """Feast's docs post with `curl -d` (form content type); the body is JSON anyway."""
    body = json.dumps({"features": ["card_stats:avg_amt_1d"], "entities": {"cc_num": [4000000000000005]}}).encode()
    for content_type in ("application/x-www-form-urlencoded", "text/plain"):
        status, raw = call(online_http["http"], "/get-online-features", raw=body, content_type=content_type)
        assert status == 200, f"Content-Type {content_type}: {status} {raw[:300]!r}"
        assert list(columns(json.loads(raw))) == ["cc_num", "avg_amt_1d"]


WINDOW_REFS = ["card_txn_windows:txn_count_5m", "card_txn_windows:amt_sum_1h", "card_txn_windows:amt_avg_1d",
               "card_txn_windows:merchants_1h"]


def test_push_is_visible_to_the_next_lookup(online_http):
    base = online_http["http"]
    card = 4_000_000_000_888_888  # not in the generated data
    cards = [card, card + 1]
    request = {"features": WINDOW_REFS, "entities": {"cc_num": cards}}

    def windows():
        http = lookup(base, request)
        native = do_get(online_http["flight"], {"features": WINDOW_REFS, "entities": {"cc_num": cards}, "include_metadata": True})
        assert_same_as_native(http, native, {"cc_num"}, lambda n: "card_txn_windows")
        return http

    before = windows()
    assert before["txn_count_5m"]["values"] == [0, 0] and before["amt_sum_1h"]["values"] == [None, None], before
    assert before["txn_count_5m"]["statuses"] == ["NOT_FOUND", "NOT_FOUND"]
    now = datetime.fromisoformat(ONLINE_NOW)
    df = {
        "trans_id": ["h1", "h2", "h3"],
        "cc_num": [card] * 3,
        "merchant_id": [1, 2, 2],
        "amt": [1.5, 2.5, 4.0],
        "lat": [40.0] * 3,
        "lon": [-74.0] * 3,
        # ISO-8601 as clients write it: Z, an offset, and naive (UTC), as Feast sends.
        "event_timestamp": [(now - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                            (now - timedelta(minutes=2)).isoformat(),
                            (now - timedelta(minutes=30)).replace(tzinfo=None).isoformat(timespec="microseconds")],
        "is_fraud": [None] * 3,
    }
    # A refused push (a wrong type in one row) writes nothing.
    status, text = call(base, "/push", {"push_source_name": "transactions", "df": dict(df, amt=[1.5, "x", 4.0]), "to": "online"})
    assert 400 <= status < 500, f"a push with a string amount: {status} {text[:300]!r}"
    assert windows()["txn_count_5m"]["values"] == [0, 0], "a refused push wrote rows"
    status, text = call(base, "/push", {"push_source_name": "transactions", "df": df, "to": "online"})
    assert status == 200, f"/push: {status} {text[:500]!r}"
    after = windows()
    assert after["txn_count_5m"]["values"] == [2, 0], after["txn_count_5m"]
    assert after["amt_sum_1h"]["values"] == [8.0, None], after["amt_sum_1h"]
    assert abs(after["amt_avg_1d"]["values"][0] - 8.0 / 3) < 1e-12, after["amt_avg_1d"]
    assert after["merchants_1h"]["values"][0] == 2, after["merchants_1h"]
    assert [r["statuses"] for r in after.values()] == [["PRESENT", "PRESENT"]] + [["PRESENT", "NOT_FOUND"]] * 4
