"""The streaming scorer with a model trained by the real xgboost package on a
Quiver training set (pulled with plain pyarrow.flight, chargeback labels as of
retrieval): quiver-score's scores equal xgboost's predict to 1e-6 on the feature
values it served, every transaction gets one decision, and the feature log holds
exactly what was served."""
import json
import subprocess
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.flight as flight
import pyarrow.parquet as pq
import pytest
import xgboost as xgb

from conftest import ONLINE_NOW, action, score_bin

# Served features, on-demand features and a request field (amt).
FEATURES = ["amt", "avg_amt_1d", "txn_count_1d", "max_amt_1d", "credit_limit", "merchant_avg_amt_1d",
            "distance_from_home_km", "amt_over_avg_1d", "amt_over_limit", "amt_over_merchant_avg"]
SPLIT = "2026-02-05T00:00:00Z"


def training_set(client):
    command = {"get_historical_features": {
        "feature_service": "fraud_v3",
        "entity_sql": "SELECT trans_id, cc_num, merchant_id, amt, lat, lon, event_timestamp FROM transactions "
                      f"WHERE event_timestamp < TIMESTAMP '{SPLIT}'",
        "labels": ["chargebacks"],
        "labels_as_of": SPLIT,
    }}
    info = client.get_flight_info(flight.FlightDescriptor.for_command(json.dumps(command).encode()))
    return client.do_get(info.endpoints[0].ticket).read_all()


def score_cmd(online_server, *args):
    """The quiver-score command line against the online test server."""
    return [score_bin(), "--server", online_server.replace("grpc://", "http://"), *args]


def matrix(columns):
    return np.column_stack([np.array([np.nan if v is None else float(v) for v in c], dtype=np.float64) for c in columns])


@pytest.fixture(scope="module")
def trained(online_server, tmp_path_factory):
    client = flight.FlightClient(online_server)
    action(client, "materialize", {"start": "2025-01-01T00:00:00Z", "end": ONLINE_NOW})
    table = training_set(client)
    assert table.num_rows > 10000
    # Labels are the chargebacks known at the split; unlabeled means not (yet) charged back.
    y = np.array([bool(v) for v in table.column("is_fraud").to_pylist()], dtype=np.float32)
    assert 0 < y.sum() < len(y)
    X = matrix([table.column(f).to_pylist() for f in FEATURES])
    assert np.isnan(X).any(), "missing values exercise the default directions"
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 4, "eta": 0.3, "seed": 1},
                        xgb.DMatrix(X, label=y, feature_names=FEATURES, missing=np.nan), num_boost_round=25)
    d = tmp_path_factory.mktemp("model")
    path = d / "model.json"
    booster.save_model(str(path))
    return booster, path


def held_out(repo):
    tx = pq.read_table(repo / "data" / "transactions" / "part-00000.parquet")
    start = datetime(2026, 2, 8, tzinfo=timezone.utc)
    tx = tx.filter(pc.greater_equal(tx.column("event_timestamp"), pa.scalar(start, pa.timestamp("us", "UTC"))))
    rows = tx.select(["trans_id", "cc_num", "merchant_id", "amt", "lat", "lon", "event_timestamp"]).to_pylist()
    for r in rows:
        r["event_timestamp"] = r["event_timestamp"].isoformat()
    return rows


def test_scores_equal_xgboost_predict(repo, online_server, trained, tmp_path):
    booster, model_path = trained
    rows = held_out(repo)
    assert len(rows) > 500
    tx_path = tmp_path / "tx.jsonl"
    tx_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "decisions.jsonl"
    log_dir = tmp_path / "feature_log"
    proc = subprocess.run(
        score_cmd(online_server, "--service", "fraud_v3", "--model", str(model_path), "--input", str(tx_path), "--output", str(out),
         "--feature-log", str(log_dir), "--review-at", "0.3", "--decline-at", "0.7",
         "--max-batch", "128", "--json-report"),
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    assert report["scored"] == len(rows) and report["unscored"] == 0 and report["rejected"] == 0

    decisions = [json.loads(line) for line in out.read_text().splitlines()]
    assert [d["trans_id"] for d in decisions] == [r["trans_id"] for r in rows], "one decision each, in order"
    served = matrix([[d[f] if f in d else d["features"][f] for d in decisions] for f in FEATURES])
    expected = booster.predict(xgb.DMatrix(served, feature_names=FEATURES, missing=np.nan))
    scores = np.array([d["score"] for d in decisions])
    assert np.abs(scores - expected).max() <= 1e-6
    assert len(np.unique(np.round(expected, 6))) > 20, "the comparison covers many leaves"
    assert np.isnan(served).any()
    for d in decisions:
        want = "decline" if d["score"] >= 0.7 else "review" if d["score"] >= 0.3 else "approve"
        assert d["decision"] == want
        assert d["timings_us"]["event_to_decision"] > 0

    # The feature log holds exactly what was served, ready to train on.
    logged = pq.read_table(log_dir).sort_by("trans_id")
    assert logged.num_rows == len(rows)
    by_id = {d["trans_id"]: d for d in decisions}
    for rec in logged.select(["trans_id", "distance_from_home_km", "score"]).to_pylist():
        d = by_id[rec["trans_id"]]
        assert rec["score"] == d["score"]
        assert rec["distance_from_home_km"] == d["features"]["distance_from_home_km"]


def test_bad_model_and_unknown_service_are_clear_errors(online_server, tmp_path):
    bad = tmp_path / "model.json"
    bad.write_text('{"learner": {"objective": {"name": "multi:softprob"}}}')
    proc = subprocess.run(score_cmd(online_server, "--model", str(bad)),
                          input="", capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "multi:softprob" in proc.stderr
    good = tmp_path / "logistic.json"
    good.write_text('{"quiver_model": "logistic", "features": ["amt"], "intercept": 0, "weights": [1], "means": [0], "scales": [1]}')
    proc = subprocess.run(score_cmd(online_server, "--model", str(good), "--service", "nope"), input="", capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "nope" in proc.stderr and "fraud_v3" in proc.stderr


def test_parquet_in_parquet_out_equals_json_lines(repo, online_server, trained, tmp_path):
    _, model_path = trained
    rows = held_out(repo)[:300]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "tx.parquet")
    (tmp_path / "tx.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = score_cmd(online_server, "--model", str(model_path))
    for src, dst in [("tx.parquet", "d.parquet"), ("tx.jsonl", "d.jsonl")]:
        proc = subprocess.run(base + ["--input", str(tmp_path / src), "--output", str(tmp_path / dst)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    from_parquet = pq.read_table(tmp_path / "d.parquet")
    from_json = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert from_parquet.column("trans_id").to_pylist() == [d["trans_id"] for d in from_json]
    assert from_parquet.column("score").to_pylist() == [d["score"] for d in from_json]
    assert from_parquet.schema.field("features").type.num_fields == len(from_json[0]["features"])


def test_kafka_in_kafka_out_decides_everything_under_sigkill(repo, online_server, trained, tmp_path, kafka_broker):
    """Transactions from a topic, decisions to a topic: a scorer killed with SIGKILL
    and restarted decides every transaction; the only duplicates are transactions
    at or after the offsets it had committed (the uncommitted tail)."""
    import signal
    import time
    from confluent_kafka import Consumer, Producer, TopicPartition

    _, model_path = trained
    broker = kafka_broker("tx_in", "decisions", partitions=3)
    rows = held_out(repo)[:1500]
    where = {}  # trans_id -> (partition, offset)

    def delivered(err, msg):
        assert err is None, err
        where[json.loads(msg.value())["trans_id"]] = (msg.partition(), msg.offset())

    producer = Producer({"bootstrap.servers": broker})
    for r in rows:
        producer.produce("tx_in", key=str(r["cc_num"]), value=json.dumps(r).encode(), on_delivery=delivered)
    producer.flush(30)
    assert len(where) == len(rows)

    config = tmp_path / "scorer.yaml"
    config.write_text(
        "kafka:\n"
        f"  brokers: \"{broker}\"\n"
        "  group: scorers\n"
        "  transactions_topic: tx_in\n"
        "  decisions_topic: decisions\n"
        "  properties: {session.timeout.ms: \"6000\", heartbeat.interval.ms: \"500\"}\n")
    cmd = score_cmd(online_server, "--config", str(config), "--model", str(model_path),
                    "--input", "kafka", "--output", "kafka", "--max-batch", "8", "--max-wait-us", "100")

    decided = []
    reader = Consumer({"bootstrap.servers": broker, "group.id": "reader", "auto.offset.reset": "earliest",
                       "session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
    reader.subscribe(["decisions"])

    def read_until(n, timeout):
        deadline = time.time() + timeout
        while len(decided) < n and time.time() < deadline:
            m = reader.poll(0.2)
            if m is not None and m.error() is None:
                d = json.loads(m.value())
                assert m.key().decode() == d["trans_id"], "keyed by transaction id"
                decided.append(d["trans_id"])

    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    read_until(len(rows) // 4, 90)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert len(decided) < len(rows), "the kill came after every decision; the test did not test"
    probe = Consumer({"bootstrap.servers": broker, "group.id": "scorers"})
    committed = {tp.partition: tp.offset for tp in probe.committed([TopicPartition("tx_in", p) for p in range(3)], timeout=10)}
    probe.close()

    second = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while set(decided) != set(where) and time.time() < deadline:
        read_until(len(decided) + 1, 1)
    second.send_signal(signal.SIGINT)
    second.wait(timeout=30)
    reader.close()

    assert set(decided) == set(where), f"{len(set(where) - set(decided))} transactions never decided"
    seen = set()
    for t in decided:
        if t in seen:
            p, off = where[t]
            assert off >= committed[p], f"{t} decided twice though offset {off} < committed {committed[p]} in partition {p}"
        seen.add(t)
