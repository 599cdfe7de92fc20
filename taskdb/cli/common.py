"""What every command shares: the ``--db`` and ``--json`` options, running an async
body against an open database, loading the user's ``module:attr``, and printing."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator
from functools import wraps
from typing import Any, TypeVar

import click
from rich.console import Console

from taskdb import settings
from taskdb.app import App
from taskdb.errors import ConfigurationError
from taskdb.json_views import dumps
from taskdb.store import connect

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

out = Console(highlight=False, markup=False)
err = Console(stderr=True, highlight=False, markup=False)


def db_option(func: F) -> F:
    return click.option(
        "--db",
        "db_url",
        envvar=settings.URL_ENV,
        default=settings.DEFAULT_URL,
        show_default=True,
        help="Database URL (env TASKDB_URL).",
    )(func)


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(
        func
    )


def with_db(func: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """Run an async command body ``func(db, **kwargs)`` with the database of
    ``db_url`` open, closing it afterwards."""

    @wraps(func)
    def wrapper(db_url: str, **kwargs: Any) -> T:
        async def body() -> T:
            db = connect(db_url)
            try:
                return await func(db, **kwargs)
            finally:
                await db.aclose()

        return asyncio.run(body())

    return wrapper


def import_module(module_name: str) -> Any:
    """Import ``module_name`` with the current directory importable, as ``python -m``
    has it (:class:`ConfigurationError` when it cannot be imported)."""
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name!r}: {exc}") from exc


def load_target(spec: str) -> Any:
    """What ``module:attr`` names (the current directory is importable): an
    :class:`~taskdb.App`, or a handler (a callable)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigurationError(f"the target must look like module:attr, got {spec!r}")
    target = getattr(import_module(module_name), attr, None)
    if not isinstance(target, App) and not callable(target):
        raise ConfigurationError(f"{spec!r} is neither an App nor a callable in {module_name!r}")
    return target


def given_db_url(ctx: click.Context, db_url: str) -> str | None:
    """``--db`` when it was given on the command line, else ``None``: an App then keeps
    its own database (``App(url)``, or ``TASKDB_URL``)."""
    if ctx.get_parameter_source("db_url") is click.core.ParameterSource.COMMANDLINE:
        return db_url
    return None


def load_app(ctx: click.Context, target: str, db_url: str, *, needed_for: str) -> App:
    """The App ``module:attr`` names, on ``--db`` when given on the command line
    (:class:`ConfigurationError` when it is not an App: it is ``needed_for``)."""
    app = load_target(target)
    if not isinstance(app, App):
        raise ConfigurationError(f"{target!r} is not an App: {needed_for}")
    url = given_db_url(ctx, db_url)
    if url is not None:
        app.bind(connect(url))
    return app


def print_json(value: Any) -> None:
    click.echo(dumps(value, indent=2))


def json_line(value: Any) -> str:
    return dumps(value)


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event, again: Callable[[], None] | None = None) -> Iterator[None]:
    """Set ``stop`` on SIGINT or SIGTERM while inside (the running loop's handlers);
    call ``again`` on every further one."""
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)

    def received() -> None:
        if stop.is_set() and again is not None:
            again()
        stop.set()

    for sig in signals:
        loop.add_signal_handler(sig, received)
    try:
        yield
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
