"""The BI report end to end: after a realistic burst through the Procfile processes and ``bi``
(``python -m workers.bi``), the report renders in headless Chromium with no external resource
and shows the mart's figures.

The service's tables are emptied at the start of this module (as ``clean_db`` does), so the
ledger holds this burst only; the mart has a database of its own (``BI_DATABASE_URL``).
"""
from __future__ import annotations

import html.parser
import re
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

from tests.e2e.bikit import q, service

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e")]
CHROMIUM = Path("/usr/bin/chromium")


class Tables(html.parser.HTMLParser):
    """Every <table id=...> of a page as {id: [[cell text, ...], ...]} (body rows)."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table = self._row = self._cell = None
        self.resources: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for attr in ("src", "href", "data", "poster", "srcset"):
            if a.get(attr):
                self.resources.append(f"{tag}.{attr}={a[attr][:60]}")
        if tag == "table":
            self._table = self.tables.setdefault(a.get("id", ""), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row:
                self._table.append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


class ProxyTrap:
    """A local HTTP proxy that answers nothing and records every request Chromium sends it."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.requests: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    self.requests.append(conn.recv(4096).split(b"\r\n", 1)[0].decode("latin-1"))
                    conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                except OSError:
                    pass

    def close(self):
        self.sock.close()


#: Requests Chromium sends for itself even for a blank page, whatever flags it gets (network
#: time, component updates, account check): not the page's. Anything else fails the test.
BROWSER_OWN = (re.compile(r"^GET http://clients2\.google\.com/time/1/current\?"),
               re.compile(r"^POST http://update\.googleapis\.com/service/update2/json\?"),
               re.compile(r"^CONNECT (update\.googleapis\.com|accounts\.google\.com|www\.google\.com):443 "))


def page_requests(requests_seen: list[str]) -> list[str]:
    return [r for r in requests_seen if not any(p.match(r) for p in BROWSER_OWN)]


def chromium(args: list[str], profile: Path, proxy: ProxyTrap) -> subprocess.CompletedProcess:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--no-first-run", "--disable-component-update", "--disable-sync", "--disable-extensions",
           "--no-pings", "--disable-domain-reliability", "--disable-client-side-phishing-detection",
           "--disable-default-apps", "--disable-features=NetworkTimeServiceQuerying,OptimizationHints,Translate",
           f"--user-data-dir={profile}", f"--proxy-server=http://127.0.0.1:{proxy.port}",
           "--proxy-bypass-list=<-loopback>"] + args
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is absent (Debian package `chromium`; "
                                                  "`.ci/run` installs it)")
def test_report_renders_in_headless_chromium_with_no_external_resource_and_the_marts_figures(burst, mart, tmp_path):
    from workers.bi.report import write_report

    out = tmp_path / "report"
    page = write_report(out_dir=out)
    assert page == out / "report.html"
    assert {p.name for p in out.glob("*.csv")} == {"rollforward.csv", "aging.csv", "daily_snapshot.csv",
                                                   "pool_levels.csv", "pool_daily.csv", "anomalies.csv"}
    text = page.read_text()
    assert "<script" not in text.lower() and "@import" not in text and "url(" not in text
    assert "google" not in text.lower()  # so the browser's own calls to Google are not the page's
    proxy = ProxyTrap()
    profile = Path(tempfile.mkdtemp(prefix="gcp-chromium-"))
    try:
        done = chromium(["--dump-dom", page.resolve().as_uri()], profile, proxy)
        assert done.returncode == 0, done.stderr[-2000:]
        shot = tmp_path / "report.png"
        chromium([f"--screenshot={shot}", "--window-size=1280,2400", "--hide-scrollbars", page.resolve().as_uri()],
                 profile, proxy)
    finally:
        proxy.close()
        shutil.rmtree(profile, ignore_errors=True)
    # then the page loaded nothing from anywhere: no request of the page reached the proxy
    # (every http and https request goes through it), and every resource in the rendered DOM
    # is an inline data: URI
    assert page_requests(proxy.requests) == [], proxy.requests
    dom = Tables()
    dom.feed(done.stdout)
    assert dom.resources and all(r.startswith("img.src=data:image/png;base64,") for r in dom.resources), dom.resources
    assert len([r for r in dom.resources if r.startswith("img.")]) == 4
    assert shot.exists() and shot.stat().st_size > 10_000
    # and the figures it shows are the service's, to the kopeck: the roll-forward per selling
    # channel closes on each channel's outstanding balance, and balances line by line
    cur = burst["currency"]
    liability = {ch: v for ch, v in service(
        "SELECT channel, sum(remaining_balance) FROM gift_certificate WHERE trim(currency) = %s AND status IN"
        " ('ISSUED', 'PARTIALLY_REDEEMED', 'REDEEMED', 'LOCKED', 'REFUND_PENDING', 'REFUND_PENDING_DETAILS')"
        " GROUP BY 1", cur)}
    table = {r[0]: r[1:] for r in dom.tables[f"rollforward_channels_{cur}"]}
    assert table["Closing liability"] == [f"{liability['ONLINE_STORE']:,.2f}", f"{liability['POS']:,.2f}",
                                          f"{sum(liability.values()):,.2f}"]
    assert table["+ Sold"] == ["3,000.00", "2,500.00", "5,500.00"]
    # (a redemption is booked on the channel that sold the certificate: b was sold at POS)
    assert table["− Redeemed"] == ["600.00", "1,000.00", "1,600.00"]
    assert table["− Expired (breakage)"] == ["0.00", "500.00", "500.00"]
    assert table["− Cancelled"] == ["800.00", "0.00", "800.00"]
    assert table["+ Refunds onto certificates"] == ["200.00", "0.00", "200.00"]
    assert table["− Refunded to buyers"] == ["700.00", "0.00", "700.00"]
    anomalies = q(mart.db, "SELECT count(*) FROM bi.anomaly")[0][0]
    assert len([r for r in dom.tables["anomalies"] if r != ["none in this period"]]) == min(anomalies, 50)
    assert re.search(r"Outstanding liability", done.stdout)
    assert "it shows at the segment&#x27;s next event" in text or "it shows at the segment's next event" in text
