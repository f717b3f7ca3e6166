"""``python -m loader``: generate a batch file, or load one into the pool (see docs/loader.md)."""
from __future__ import annotations

import datetime as dt
import logging
import os
import sys
from pathlib import Path

import click

from loader import client as loading
from loader import codes, reader
from models.domain.errors import DomainError
from models.domain.money import positive_money
from models.domain.states import KINDS
from models.domain.timeutil import parse_time

#: Environment variables the loader reads.
ENV_URL, ENV_TOKEN = "GCP_URL", "GCP_TOKEN"


class Fatal(click.ClickException):
    """A problem that stops the command before it starts (exit code 2)."""

    exit_code = loading.FAILED


def default_url() -> str:
    return os.environ.get(ENV_URL) or f"http://127.0.0.1:{os.environ.get('PORT') or 8080}"


def parse_expires(value: str | None, now: dt.datetime | None = None) -> str | None:
    """``--expires``: a date (valid through the end of that day, UTC) or an RFC 3339 time."""
    if not value:
        return None
    now = now or dt.datetime.now(dt.timezone.utc)
    try:
        if len(value) == 10:
            day = dt.date.fromisoformat(value)
            moment = dt.datetime.combine(day, dt.time(23, 59, 59), dt.timezone.utc)
        else:
            moment = parse_time(value)
    except ValueError:
        raise Fatal(f"--expires {value!r}: a date (2027-12-31) or an RFC 3339 time (2027-12-31T23:59:59Z)")
    if moment <= now:
        raise Fatal(f"--expires {value}: already passed")
    return reader.format_time(moment)


@click.group()
def cli():
    """Fill the gift-certificate pool: generate code files and load them over HTTP."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")


@cli.command()
@click.option("--count", type=click.IntRange(1, 100_000_000), required=True, help="how many codes")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="the file to write (.csv or .jsonl)")
@click.option("--prefix", default=codes.DEFAULT_PREFIX, show_default=True,
              help="printed before the random part (A-Z, 0-9, -)")
@click.option("--nominal", default=None, help='the printed nominal, e.g. "1500.00" (default: open value)')
@click.option("--expires", default=None, help="expiry: a date (valid through that day, UTC) or RFC 3339 time")
@click.option("--length", type=int, default=codes.DEFAULT_LENGTH, show_default=True,
              help="random characters per code")
@click.option("--format", "fmt", type=click.Choice(reader.FORMATS), default=None,
              help="default: from the file name")
@click.option("--force", is_flag=True, help="overwrite an existing file")
@click.option("--with-cvc", is_flag=True,
              help="PHYSICAL cards: a random CVC per code (CVC_LENGTH digits) for the printer to "
                   "print under the scratch panel; keep the file as secret as the cards")
def generate(count, out, prefix, nominal, expires, length, fmt, force, with_cvc):
    """Write COUNT unique random codes (with a Luhn mod 36 check character) to a batch file."""
    try:
        codes.check_prefix(prefix, length)
        fmt = reader.detect_format(out, fmt)
    except (ValueError, reader.FileError) as exc:
        raise Fatal(str(exc))
    if nominal is not None:
        try:
            positive_money(nominal, "--nominal")
        except DomainError as exc:
            raise Fatal(exc.message)
    expires_at = parse_expires(expires)
    if out.exists() and not force:
        raise Fatal(f"{out} exists (use --force to overwrite)")
    tmp = out.with_name(out.name + ".tmp")
    cvc = _printed_cvc if with_cvc else None
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        if fmt == "csv":
            f.write("code,nominal,expiresAt" + (",cvc" if cvc else "") + "\n")
            tail = f",{nominal or ''},{expires_at or ''}"
            for block in _blocks(codes.generate(count, prefix, length)):
                f.write("".join(code + tail + (f",{cvc()}" if cvc else "") + "\n" for code in block))
        else:
            tail = (f',"nominal":"{nominal}"' if nominal else "") + \
                   (f',"expiresAt":"{expires_at}"' if expires_at else "")
            for block in _blocks(codes.generate(count, prefix, length)):
                f.write("".join('{"code":"' + code + '"' + tail + (f',"cvc":"{cvc()}"' if cvc else "")
                                + "}\n" for code in block))
    os.replace(tmp, out)
    click.echo(f"wrote {count} codes to {out}")
    return loading.OK


def _printed_cvc() -> str:
    import secrets

    from config import get_settings

    return "".join(secrets.choice("0123456789") for _ in range(get_settings().cvc_length))


def _blocks(items, size: int = 10_000):
    block = []
    for item in items:
        block.append(item)
        if len(block) == size:
            yield block
            block = []
    if block:
        yield block


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="check everything against the service, write nothing")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="where to write the JSON report (default: FILE.report.json)")
@click.option("--kind", type=click.Choice(KINDS), default="ELECTRONIC", show_default=True)
@click.option("--currency", default="RUB", show_default=True)
@click.option("--batch-id", default=None, help="default: file-<sha256 of the content> (resumable)")
@click.option("--url", default=None, help=f"the service (default: ${ENV_URL} or http://127.0.0.1:$PORT|8080)")
@click.option("--token", default=None, envvar=ENV_TOKEN, show_envvar=True,
              help="a bearer token with scope batches:write")
@click.option("--format", "fmt", type=click.Choice(reader.FORMATS), default=None,
              help="default: from the file name (.csv, .jsonl)")
@click.option("--no-check-digit", is_flag=True, help="accept codes without a valid check character")
@click.option("--chunk-size", type=click.IntRange(1, 50_000), default=10_000, show_default=True,
              help="rows per request")
@click.option("--max-body-bytes", type=click.IntRange(10_000), default=1_000_000, show_default=True,
              help="largest request body (the service's MAX_BODY_BYTES)")
@click.option("--workers", type=click.IntRange(1, 16), default=2, show_default=True,
              help="requests in flight at once")
@click.option("--max-chunks", type=click.IntRange(0), default=None, hidden=True,
              help="stop after sending this many chunks (to test resuming)")
@click.option("--progress/--no-progress", default=True, help="progress bar on a terminal")
def load(file, dry_run, report_path, kind, currency, batch_id, url, token, fmt, no_check_digit,
         chunk_size, max_body_bytes, workers, max_chunks, progress):
    """Check every row of FILE and load it into the pool in chunks; write a report.

    Exit code 0 when every row loaded (or would load), 1 when rows were rejected (see the
    report), 2 when the load could not run, 3 when interrupted (run it again to resume).
    """
    if not token:
        raise Fatal(f"no token: pass --token or set {ENV_TOKEN} "
                    "(python app.py token --client loader --scope batches:write)")
    if batch_id is not None and not 1 <= len(batch_id) <= 64:
        raise Fatal("--batch-id: 1 to 64 characters")
    opts = loading.LoadOptions(
        path=file, url=url or default_url(), token=token, kind=kind, currency=currency,
        batch_id=batch_id, dry_run=dry_run, fmt=fmt, check_digit=not no_check_digit,
        chunk_size=chunk_size, max_body_bytes=max_body_bytes, workers=workers, max_chunks=max_chunks,
        report_path=report_path or file.with_name(file.name + ".report.json"), progress=progress)
    run = loading.Loader(opts)
    code = run.run()
    s = run.summary
    c = s["counts"]
    verb = "would load" if dry_run else "loaded"
    click.echo(f"{verb} {c['loaded']} of {c['rows']} rows into batch {s.get('batchId')} "
               f"(new {c['accepted']}, already loaded {c['alreadyLoaded']}); rejected {c['rejected']}"
               f"{'; not sent ' + str(c['notSent']) if c['notSent'] else ''}; "
               f"{s['seconds']} s; report {opts.report_path}")
    if s["error"]:
        click.echo(f"error: {s['error']}", err=True)
    return code


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (tests call this in-process)."""
    try:
        result = cli.main(args=argv, prog_name="python -m loader", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort:
        click.echo("aborted", err=True)
        return loading.INTERRUPTED
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
