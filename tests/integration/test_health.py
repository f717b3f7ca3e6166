"""Health, metrics, docs and the error model at the HTTP edge."""
import pytest

from app import create_app
from config import get_settings


@pytest.fixture(scope="module")
def client(stack):
    return create_app(get_settings()).test_client()


def test_live_and_ready_answer_200_with_every_part_checked(client):
    assert client.get("/health/live").json == {"status": "ok"}
    ready = client.get("/health/ready")
    assert ready.status_code == 200, ready.json
    assert set(ready.json["checks"]) == {"postgres", "redis", "kafka"}
    assert all(c["status"] == "ok" for c in ready.json["checks"].values())


def test_ready_names_the_failing_part(client, monkeypatch):
    import api.health as health

    def broken():
        raise ConnectionError("redis is down")

    monkeypatch.setattr(health, "CHECKS", (("postgres", health.check_postgres), ("redis", broken),
                                           ("kafka", health.check_kafka)))
    resp = client.get("/health/ready")
    assert resp.status_code == 503
    assert resp.json["failing"] == ["redis"]
    assert "redis is down" in resp.json["checks"]["redis"]["error"]


def test_metrics_are_prometheus_text(client):
    client.get("/health/live")
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.content_type.startswith("text/plain")
    assert b"gcp_http_requests_total" in resp.data


def test_openapi_and_local_swagger_ui(client):
    spec = client.get("/openapi.json")
    assert spec.status_code == 200 and spec.json["openapi"].startswith("3.")
    docs = client.get("/docs")
    assert docs.status_code == 200 and b"/docs/assets/swagger-ui-bundle.js" in docs.data
    asset = client.get("/docs/assets/swagger-ui-bundle.js")
    assert asset.status_code == 200 and len(asset.data) > 100_000


def test_unknown_route_uses_the_error_model(client):
    resp = client.get("/nope")
    assert resp.status_code == 404
    assert resp.json == {"code": "NOT_FOUND", "message": resp.json["message"], "details": {}}
