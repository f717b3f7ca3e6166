"""The loader's chunking and request bodies, with a stand-in for the HTTP client (no service)."""
import json

import pytest

from loader import client as loading, codes


class Recorder:
    """Answers every chunk as fully accepted and keeps the request bodies."""

    def __init__(self, too_large_over: int | None = None):
        self.bodies: list[dict] = []
        self.too_large_over = too_large_over

    def request(self, method, path, body=None):
        doc = json.loads(body)
        if self.too_large_over is not None and len(body) > self.too_large_over:
            raise loading.TooLarge()
        self.bodies.append(doc)
        return 201, {"accepted": len(doc["certificates"]), "alreadyLoaded": 0, "rejected": []}


def good(body: str) -> str:
    return body + codes.check_char(body)


def write(tmp_path, rows):
    path = tmp_path / "f.csv"
    path.write_text("code,nominal,expiresAt\n" + "".join(f"{c},{n},{e}\n" for c, n, e in rows))
    return path


def opts(path, **kw):
    return loading.LoadOptions(path=path, url="http://x", token="t", progress=False, report_path=None, **kw)


def test_chunks_carry_defaults_and_each_certificate_its_own_differences(tmp_path):
    # given rows mostly sharing nominal and expiry, one open-value, one with another expiry
    a, b, c, d = (good(f"GCROW{i}X") for i in range(4))
    path = write(tmp_path, [(a, "100.00", "2031-01-01T00:00:00Z"), (b, "100.00", "2031-01-01T00:00:00Z"),
                            (c, "", ""), (d, "100.00", "2032-01-01T00:00:00+01:00")])
    rec = Recorder()
    # when loaded
    code = loading.Loader(opts(path), rec).run()
    # then one request whose defaults are the first row's, and the others say what differs
    assert code == 0 and len(rec.bodies) == 1
    body = rec.bodies[0]
    assert (body["nominal"], body["expiresAt"], body["dryRun"]) == ("100.00", "2031-01-01T00:00:00Z", False)
    assert body["certificates"] == [
        {"code": a}, {"code": b}, {"code": c, "nominal": None, "expiresAt": None},
        {"code": d, "nominal": "100.00", "expiresAt": "2031-12-31T23:00:00Z"}]


def test_chunks_respect_rows_and_bytes_and_split_on_413(tmp_path):
    # given 50 rows
    rows = [(good(f"GCSIZE{i:04d}"), "", "") for i in range(50)]
    path = write(tmp_path, rows)
    # when the chunk size is 20 rows: 20, 20, 10
    rec = Recorder()
    assert loading.Loader(opts(path, chunk_size=20), rec).run() == 0
    assert [len(b["certificates"]) for b in rec.bodies] == [20, 20, 10]
    # when the body budget is small: every chunk stays under it
    rec = Recorder()
    assert loading.Loader(opts(path, chunk_size=50, max_body_bytes=900), rec).run() == 0
    assert sum(len(b["certificates"]) for b in rec.bodies) == 50
    assert all(len(json.dumps(b)) <= 900 for b in rec.bodies)
    # when the service refuses bodies over 600 bytes: the chunks are halved until they pass
    rec = Recorder(too_large_over=600)
    loader = loading.Loader(opts(path, chunk_size=50), rec)
    assert loader.run() == 0 and loader.summary["counts"]["accepted"] == 50
    assert len(rec.bodies) > 1
    # and a single row still too large stops the load
    rec = Recorder(too_large_over=10)
    loader = loading.Loader(opts(path), rec)
    assert loader.run() == 2 and "too large" in loader.summary["error"]


def test_a_second_signal_stops_at_once(tmp_path):
    loader = loading.Loader(opts(write(tmp_path, [])), Recorder())
    loader._on_signal(15, None)
    assert loader._stop
    with pytest.raises(KeyboardInterrupt):
        loader._on_signal(15, None)


def test_the_progress_bar_runs_on_a_terminal(tmp_path, monkeypatch, capsys):
    # given a terminal on stderr
    from rich.console import Console
    monkeypatch.setattr(Console, "is_terminal", property(lambda self: True))
    path = write(tmp_path, [(good(f"GCBAR{i:03d}"), "", "") for i in range(30)])
    # when a load runs with the progress bar
    loader = loading.Loader(loading.LoadOptions(path=path, url="http://x", token="t", chunk_size=10,
                                                report_path=None), Recorder())
    # then it completes and the bar was drawn on stderr
    assert loader.run() == 0 and loader.summary["counts"]["accepted"] == 30
    assert "loading" in capsys.readouterr().err


def test_default_url_follows_the_environment(monkeypatch):
    from loader.__main__ import default_url
    monkeypatch.delenv("GCP_URL", raising=False)
    monkeypatch.setenv("PORT", "9999")
    assert default_url() == "http://127.0.0.1:9999"
    monkeypatch.setenv("GCP_URL", "http://gcp:8080")
    assert default_url() == "http://gcp:8080"
