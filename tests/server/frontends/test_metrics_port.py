"""With a bearer token set, what could tell an outsider which models are served needs it: per-model health
and the metrics port. The server's own health stays open for probes."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tlserve.client import Classifier, ClassifierError

from conftest import start_server, tiny_repository


def test_per_model_health_and_metrics_need_the_token(tiny_store: Path, tmp_path: Path) -> None:
    server = start_server(tiny_repository(tmp_path / "repo", tiny_store, "tickets"), tmp_path / "server.log",
                          "--auth-token", "sesame")
    try:
        with Classifier(server.target, retries=0, timeout=10) as anonymous:
            assert anonymous.health() == "SERVING"
            assert anonymous.health("tlserve.v1.Classifier") == "SERVING"
            for name in ("tickets", "no-such-model"):  # the same answer whether the model exists or not
                with pytest.raises(ClassifierError) as refused:
                    anonymous.health(f"tlserve.v1.Classifier/{name}")
                assert refused.value.code.name == "UNAUTHENTICATED"
        with Classifier(server.target, retries=0, timeout=10, token="sesame") as client:
            assert client.health("tlserve.v1.Classifier/tickets") == "SERVING"
            assert client.health("tlserve.v1.Classifier/no-such-model") == "SERVICE_UNKNOWN"
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(url, timeout=10)
        assert denied.value.code == 401
        scraped = urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": "Bearer sesame"}),
                                         timeout=10).read().decode()
        assert "tlserve_models_loaded" in scraped
    finally:
        assert server.stop() == 0
