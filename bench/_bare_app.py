"""The floor of the API benchmark: a bare Flask route doing one primary-key read with psycopg2.

Served by gunicorn with the service's own ``gunicorn.conf.py`` (same workers, threads and worker
class), so the difference to ``GET /certificates/{code}`` is what the service adds on top of
HTTP + one PostgreSQL round trip. One connection per thread, opened once.
"""
from __future__ import annotations

import json
import os
import threading

import psycopg2
from flask import Flask, Response

app = Flask(__name__)
_local = threading.local()
SQL = ("SELECT code, status, remaining_balance::text, currency, expires_at FROM gift_certificate "
       "WHERE code = %s")


def _conn():
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = _local.conn = psycopg2.connect(os.environ["DATABASE_URL"])
        conn.autocommit = True
    return conn


@app.get("/bare/<code>")
def bare(code):
    with _conn().cursor() as cur:
        cur.execute(SQL, (code,))
        row = cur.fetchone()
    if row is None:
        return Response('{"code":"CERTIFICATE_NOT_FOUND"}', 404, mimetype="application/json")
    body = {"code": row[0], "status": row[1], "remainingBalance": row[2], "currency": row[3].strip(),
            "expiresAt": row[4].isoformat() if row[4] else None}
    return Response(json.dumps(body), 200, mimetype="application/json")


@app.get("/health/live")
def live():
    return {"status": "ok"}
