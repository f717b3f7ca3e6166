"""Gunicorn settings for the `web` process (Procfile). Tuned through the environment."""
import os

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8080')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "api.server.BufferingThreadWorker"  # gthread, reading each request whole first
threads = int(os.environ.get("WEB_THREADS", "8"))
timeout = 30
graceful_timeout = 10
keepalive = 5
accesslog = None  # the app writes its own structured access log
errorlog = "-"


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def on_starting(server):
    """Refuse an unsafe production configuration before any worker starts (one line, exit 2)."""
    import sys

    import config

    problems = config.check_settings(config.get_settings())
    if problems:
        print("gcp web: refusing to start: " + "; ".join(problems), file=sys.stderr, flush=True)
        sys.exit(2)
