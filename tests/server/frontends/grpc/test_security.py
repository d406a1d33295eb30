"""TLS, mutual TLS and bearer tokens on a real server; certificates made on the fly."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from certificates import certificate, key_pem, pem

from tlserve.client import Classifier, ClassifierError

from conftest import Trained, start_server


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pki")
    ca = certificate("tlserve test CA", None, ca=True)
    server = certificate("localhost", ca)
    client = certificate("backend", ca)
    other_ca = certificate("someone else's CA", None, ca=True)
    stranger = certificate("stranger", other_ca)
    files = {
        "ca": pem(ca[0]), "server_cert": pem(server[0]), "server_key": key_pem(server[1]),
        "client_cert": pem(client[0]), "client_key": key_pem(client[1]),
        "stranger_cert": pem(stranger[0]), "stranger_key": key_pem(stranger[1]),
    }
    for name, data in files.items():
        (folder / f"{name}.pem").write_bytes(data)
    return {name: folder / f"{name}.pem" for name in files}


def _classify(target: str, **options: object) -> grpc.StatusCode:
    try:
        with Classifier(target, model="wn-frozen", timeout=5, retries=0, **options) as client:  # type: ignore[arg-type]
            client.classify(["a small cat"])
    except ClassifierError as exc:
        return exc.code
    return grpc.StatusCode.OK


def test_tls(trained: Trained, pki: dict[str, Path], tmp_path: Path) -> None:
    proc = start_server(trained.repository, tmp_path / "s.log", "--tls-cert", str(pki["server_cert"]),
                        "--tls-key", str(pki["server_key"]), wait=False)
    try:
        ca = pki["ca"].read_bytes()
        with Classifier(proc.target, root_certificates=ca) as client:
            assert client.wait_until_serving(60) == "SERVING"
        target = f"localhost:{proc.port}"
        assert _classify(target, root_certificates=ca) == grpc.StatusCode.OK
        assert _classify(target) == grpc.StatusCode.UNAVAILABLE  # plaintext client: no handshake
        other = pki["stranger_cert"].read_bytes()  # a certificate not signed by a CA the client trusts
        assert _classify(target, root_certificates=other) == grpc.StatusCode.UNAVAILABLE
    finally:
        assert proc.stop() == 0
    assert "(TLS;" in proc.output()


def test_mutual_tls(trained: Trained, pki: dict[str, Path], tmp_path: Path) -> None:
    proc = start_server(trained.repository, tmp_path / "s.log", "--tls-cert", str(pki["server_cert"]),
                        "--tls-key", str(pki["server_key"]), "--tls-client-ca", str(pki["ca"]), wait=False)
    try:
        ca = pki["ca"].read_bytes()
        good = {"root_certificates": ca, "certificate_chain": pki["client_cert"].read_bytes(),
                "private_key": pki["client_key"].read_bytes()}
        with Classifier(proc.target, **good) as client:  # type: ignore[arg-type]
            assert client.wait_until_serving(60) == "SERVING"
        target = f"localhost:{proc.port}"
        assert _classify(target, **good) == grpc.StatusCode.OK
        assert _classify(target, root_certificates=ca) == grpc.StatusCode.UNAVAILABLE  # no client certificate
        stranger = {"root_certificates": ca, "certificate_chain": pki["stranger_cert"].read_bytes(),
                    "private_key": pki["stranger_key"].read_bytes()}
        assert _classify(target, **stranger) == grpc.StatusCode.UNAVAILABLE  # signed by another CA
    finally:
        assert proc.stop() == 0


def test_bearer_token(trained: Trained, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    proc = start_server(trained.repository, tmp_path / "s.log", "--auth-token-file", str(token_file))
    try:
        assert _classify(proc.target, token="s3cret-token") == grpc.StatusCode.OK
        assert _classify(proc.target) == grpc.StatusCode.UNAUTHENTICATED
        assert _classify(proc.target, token="s3cret-tokem") == grpc.StatusCode.UNAUTHENTICATED
        with Classifier(proc.target) as client:
            assert client.health() == "SERVING"  # health needs no token
            with pytest.raises(ClassifierError) as refused:
                client.models()
            assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
        with Classifier(proc.target, token="s3cret-token", model="wn-frozen") as client:
            assert [len(r) for r in client.classify_stream([["a"], ["b"]])] == [1, 1]
        with Classifier(proc.target, model="wn-frozen") as client, pytest.raises(ClassifierError) as streamed:
            list(client.classify_stream([["a"]]))
        assert streamed.value.code == grpc.StatusCode.UNAUTHENTICATED
    finally:
        assert proc.stop() == 0
    assert "s3cret" not in proc.output()
