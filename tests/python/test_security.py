"""TLS, mutual TLS and bearer tokens from plain pyarrow.flight, as a training job
or a scorer written in Python would connect to a secured `quiver serve`."""
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pyarrow.flight as flight
import pytest
import trustme

from conftest import ROOT, quiver_bin, run, serve


@pytest.fixture(scope="module")
def secured(repo):
    """`quiver serve` with server.tls (client certificates required) and
    server.auth, over the session repo's data. Yields (location, ca, client cert,
    client key, {role: token})."""
    d = Path(tempfile.mkdtemp(prefix="quiver-py-secure-"))
    ca = trustme.CA()
    server_cert = ca.issue_cert("localhost", "127.0.0.1")
    client_cert = ca.issue_cert("scorer@example")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    server_cert.cert_chain_pems[0].write_to_path(str(d / "server.pem"))
    server_cert.private_key_pem.write_to_path(str(d / "server.key"))
    client_cert.cert_chain_pems[0].write_to_path(str(d / "client.pem"))
    client_cert.private_key_pem.write_to_path(str(d / "client.key"))
    (d / "quiver.yaml").write_text(
        "project: fraud\n"
        f"offline_store:\n  url: {repo / 'data'}\n"
        "online_store:\n  path: ./online\n"
        "server:\n"
        "  tls: {cert: server.pem, key: server.key, client_ca: ca.pem}\n"
        "  auth: {tokens_file: tokens.yaml}\n"
    )
    shutil.copy(ROOT / "feature_repo" / "features.yaml", d / "features.yaml")
    run(d, "apply")
    tokens = {}
    for role in ("reader", "trainer", "operator"):
        tokens[role] = run(d, "token", "create", "--name", role, "--role", role).strip()
    proc, addr = serve(d)
    port = addr.rsplit(":", 1)[1]
    yield (
        f"grpc+tls://localhost:{port}",
        (d / "ca.pem").read_bytes(),
        (d / "client.pem").read_bytes(),
        (d / "client.key").read_bytes(),
        tokens,
    )
    proc.terminate()
    proc.wait(timeout=10)
    shutil.rmtree(d, ignore_errors=True)


def client_for(secured, with_cert=True):
    location, ca, cert, key, _ = secured
    if with_cert:
        return flight.FlightClient(location, tls_root_certs=ca, cert_chain=cert, private_key=key)
    return flight.FlightClient(location, tls_root_certs=ca)


def bearer(token):
    return flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {token}".encode())])


def online_ticket():
    return flight.Ticket(json.dumps({"get_online_features": {
        "feature_service": "fraud_v1", "entities": {"cc_num": [4000000000000005]}}}).encode())


def test_tls_round_trip_with_a_token(secured):
    tokens = secured[4]
    c = client_for(secured)
    flights = list(c.list_flights(options=bearer(tokens["trainer"])))
    assert len(flights) >= 3
    table = c.do_get(online_ticket(), options=bearer(tokens["reader"])).read_all()
    assert table.num_rows == 1 and "avg_amt_1d" in table.column_names


def test_missing_wrong_and_weak_tokens(secured):
    tokens = secured[4]
    c = client_for(secured)
    with pytest.raises(flight.FlightUnauthenticatedError):
        c.do_get(online_ticket()).read_all()
    with pytest.raises(flight.FlightUnauthenticatedError) as e:
        c.do_get(online_ticket(), options=bearer("qvt_wrong")).read_all()
    assert "qvt_wrong" not in str(e.value)
    with pytest.raises(flight.FlightUnauthorizedError):
        list(c.list_flights(options=bearer(tokens["reader"])))


def test_handshake_exchanges_basic_credentials_for_the_bearer_header(secured):
    tokens = secured[4]
    c = client_for(secured)
    header = c.authenticate_basic_token("anyone", tokens["reader"])
    assert header[0].lower() == b"authorization"
    options = flight.FlightCallOptions(headers=[header])
    assert c.do_get(online_ticket(), options=options).read_all().num_rows == 1


def test_mutual_tls_and_plaintext_are_enforced(secured):
    tokens = secured[4]
    with pytest.raises(flight.FlightError):
        client_for(secured, with_cert=False).do_get(online_ticket(), options=bearer(tokens["reader"])).read_all()
    port = secured[0].rsplit(":", 1)[1]
    plain = flight.FlightClient(f"grpc://127.0.0.1:{port}")
    with pytest.raises(flight.FlightError):
        plain.do_get(online_ticket(), options=bearer(tokens["reader"])).read_all()


def test_quiver_health_over_mutual_tls(secured, tmp_path):
    location, ca, cert, key, _ = secured
    for name, data in (("ca.pem", ca), ("client.pem", cert), ("client.key", key)):
        (tmp_path / name).write_bytes(data)
    addr = location.replace("grpc+tls://", "")
    out = subprocess.run(
        [quiver_bin(), "health", "--addr", addr, "--tls-ca", str(tmp_path / "ca.pem"),
         "--tls-cert", str(tmp_path / "client.pem"), "--tls-key", str(tmp_path / "client.key")],
        capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "SERVING"
