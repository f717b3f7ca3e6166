"""Health, metrics, docs and the error model at the HTTP edge."""


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
    assert resp.json["checks"]["redis"] == {"status": "down", "error": "ConnectionError"}


def test_ready_answers_an_error_class_never_the_driver_message(client, monkeypatch, caplog):
    """Every dependency pointed at a closed port: the open answer names each one down with the
    error's class; the hosts, ports and driver messages go to the log only."""
    import logging
    import socket

    import api.health as health
    from config import reset_settings
    from models.store import cache
    from models.store.db import init_db

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    closed = {"DATABASE_URL": f"postgresql://gcp:gcp-password@127.0.0.1:{port}/gcp",
              "REDIS_URL": f"redis://127.0.0.1:{port}/0", "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"}
    caplog.set_level(logging.WARNING, logger="gcp.health")
    for name, value in closed.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    try:
        init_db(closed["DATABASE_URL"])
        cache.reset()
        monkeypatch.setattr(health, "_admin", None)
        resp = client.get("/health/ready")
    finally:
        monkeypatch.undo()
        reset_settings()
        from config import get_settings

        init_db(get_settings().database_url)
        cache.reset()
        health._admin = None
    assert resp.status_code == 503 and resp.json["failing"] == ["postgres", "redis", "kafka"], resp.json
    for name in ("postgres", "redis", "kafka"):
        check = resp.json["checks"][name]
        assert check["status"] == "down" and check["error"].isidentifier(), check
    body = resp.get_data(as_text=True)
    for leak in (str(port), "127.0.0.1", "gcp-password", "Connection refused", "connect"):
        assert leak not in body, body
    logged = " ".join(str(getattr(r, "error", "")) for r in caplog.records)
    assert str(port) in logged  # the detail is for the operator's log


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
