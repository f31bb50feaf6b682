"""Kafka ingestion as a producer team would use it: confluent-kafka (librdkafka)
produces JSON transactions, some malformed, into a real broker (tansu) on
loopback; `quiver serve` runs the repo's ingest job; the windows counted online
equal what was produced, and every malformed message reaches the dead-letter
topic with its reason."""
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow.flight as flight
from confluent_kafka import Consumer, Producer

from conftest import ROOT, action, run, serve

NOW = "2026-06-01T00:00:00+00:00"


def test_confluent_kafka_events_are_counted_once_and_bad_ones_dead_lettered(kafka_broker):
    broker = kafka_broker("tx", "tx_dlq", partitions=2)
    d = Path(tempfile.mkdtemp(prefix="quiver-py-ingest-"))
    try:
        shutil.copy(ROOT / "feature_repo" / "features.yaml", d / "features.yaml")
        (d / "quiver.yaml").write_text(
            "project: fraud\noffline_store:\n  url: ./data\nonline_store:\n  path: ./data/online\n"
            "ingest:\n"
            "  - name: tx\n"
            "    source: transactions\n"
            f"    kafka: {{brokers: \"{broker}\", topic: tx, group: py, properties: {{session.timeout.ms: \"6000\", heartbeat.interval.ms: \"500\"}}}}\n"
            "    to: online\n"
            "    dead_letter: {topic: tx_dlq}\n"
        )
        run(d, "datagen", "--cards", "200", "--days", "3")
        run(d, "apply")

        producer = Producer({"bootstrap.servers": broker})
        cards = [4_100_000_000_000_000 + i for i in range(5)]
        good, bad = {c: 0 for c in cards}, []
        for i in range(400):
            card = cards[i % len(cards)]
            ts = f"2026-05-31T23:58:{i % 60:02d}.{i:03d}Z"
            msg = {"trans_id": f"k{i}", "cc_num": card, "merchant_id": i % 7, "amt": 10.0 + i,
                   "lat": 1.0, "lon": 2.0, "event_timestamp": ts}
            if i % 50 == 7:
                msg["amt"] = "ten"  # wrong type
                bad.append(f"k{i}")
            else:
                good[card] += 1
            producer.produce("tx", key=str(card), value=json.dumps(msg).encode())
        producer.produce("tx", key="x", value=b"not json at all")
        producer.flush(30)

        proc, addr = serve(d, env=dict(os.environ, QUIVER_NOW=NOW))
        try:
            client = flight.connect(f"grpc://{addr}")
            deadline = time.time() + 60
            while True:
                [job] = action(client, "ingest_status", {})
                caught_up = job["partitions"] and all(p.get("lag") == 0 for p in job["partitions"])
                if job["rows"] >= sum(good.values()) and job["dead_letters"] >= len(bad) + 1 and caught_up:
                    break
                assert time.time() < deadline, job
                time.sleep(0.1)
            assert job["rows"] == sum(good.values())
            assert job["dead_letters"] == len(bad) + 1
            assert job["state"] == "running"
            assert sorted(p["partition"] for p in job["partitions"]) == [0, 1], job

            ticket = {"get_online_features": {"features": ["card_txn_windows:txn_count_5m"], "entities": {"cc_num": cards}}}
            got = client.do_get(flight.Ticket(json.dumps(ticket).encode())).read_all().to_pylist()
            assert [r["txn_count_5m"] for r in got] == [good[c] for c in cards]
        finally:
            proc.terminate()
            proc.wait(timeout=20)

        consumer = Consumer({"bootstrap.servers": broker, "group.id": "dlq-check", "auto.offset.reset": "earliest",
                             "session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
        consumer.subscribe(["tx_dlq"])
        letters, deadline = [], time.time() + 60
        while len(letters) < len(bad) + 1 and time.time() < deadline:
            m = consumer.poll(0.5)
            if m is not None and m.error() is None:
                letters.append(json.loads(m.value()))
        consumer.close()
        assert sorted(json.loads(l["payload"])["trans_id"] for l in letters if l["payload"].startswith("{")) == sorted(bad)
        for l in letters:
            assert l["job"] == "tx" and l["topic"] == "tx" and l["reason"], l
        assert any("not JSON" in l["reason"] for l in letters)
        assert any('field "amt": expected a number, got a string' in l["reason"] for l in letters)
    finally:
        shutil.rmtree(d, ignore_errors=True)
