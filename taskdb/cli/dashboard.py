"""``taskdb dashboard``: serve :func:`taskdb.web.create_app` with uvicorn."""

from __future__ import annotations

import asyncio

import click

from taskdb.cli import logs
from taskdb.cli.common import db_option
from taskdb.store import connect

TOKEN_ENV = "TASKDB_DASHBOARD_TOKEN"


@click.command()
@db_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="Port to bind."
)
@click.option(
    "--token",
    envvar=TOKEN_ENV,
    help=f"Require this token (bearer header or sign-in form); needed for any address "
    f"but loopback (env {TOKEN_ENV}).",
)
@click.option("--read-only", is_flag=True, help="Show everything, change nothing.")
@click.option("--poll", default=0.5, show_default=True, help="Seconds between change-feed reads.")
def dashboard(
    db_url: str, host: str, port: int, token: str | None, read_only: bool, poll: float
) -> None:
    """Serve the web dashboard, its JSON API and /metrics (Ctrl-C to stop)."""
    from taskdb.web import create_app, is_loopback  # the web stack loads lazily

    if not is_loopback(host) and not token:
        raise click.ClickException(
            f"--host {host} is reachable from other machines: give --token (or bind 127.0.0.1)"
        )
    if not poll > 0:
        raise click.ClickException(f"--poll must be a positive number of seconds, got {poll}")
    import uvicorn

    async def serve() -> None:
        db = connect(db_url)
        try:
            await db.check()  # unreachable, or behind head: one line, before serving
            app = create_app(db, token=token, read_only=read_only, poll_interval=poll)
            config = uvicorn.Config(
                app, host=host, port=port, log_level="warning", proxy_headers=True
            )
            server = uvicorn.Server(config)
            shown = f"[{host}]" if ":" in host else host
            logs.status(
                f"dashboard of {db.safe_url} at http://{shown}:{port}/"
                f"{' (read-only)' if read_only else ''}; Ctrl-C to stop"
            )
            await server.serve()
        finally:
            await db.aclose()

    asyncio.run(serve())
