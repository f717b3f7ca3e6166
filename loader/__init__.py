"""The batch loader: an operator's command-line tool that fills the pool over HTTP.

    python -m loader generate --count N --out batch.csv [--prefix P] [--nominal X] [--expires D]
    python -m loader load batch.csv [--dry-run] [--report report.json] [--kind PHYSICAL]

A client of the service's API only (``POST /batches``, ``GET /pool``); see docs/loader.md.
"""
