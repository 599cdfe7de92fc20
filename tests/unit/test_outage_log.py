"""OutageLog: one WARNING when an outage begins, one INFO when it ends, nothing between."""

from __future__ import annotations

import logging

import pytest

from taskdb.errors import StorageError
from taskdb.store.errors import OutageLog, is_outage, retry_level


def _unavailable() -> StorageError:
    err = StorageError("database x unavailable: connection refused")
    err.unavailable = True
    return err


def test_an_outage_is_logged_once_and_its_end_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG, logger="taskdb")
    now = [100.0]
    monkeypatch.setattr("taskdb.store.errors.time.monotonic", lambda: now[0])
    outages = OutageLog("x", settle=1.0)
    outages.up()  # up while up: nothing
    for _ in range(50):
        err = _unavailable()
        outages.failed(err)
        assert retry_level(err) == logging.DEBUG  # a loop retries: announced once
        now[0] += 0.1
    outages.failed(StorageError("database error on x: syntax"))  # not an outage: not counted
    outages.up()  # 0.1 s after the last failure: a connection still open, not the end
    assert outages.down
    now[0] += 1.0
    outages.up()
    outages.up()
    assert not outages.down
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "database x unavailable: connection refused; retrying until it is back"),
        (logging.INFO, "database x is back after 6.0s (50 failed attempts)"),
    ]
    second = _unavailable()
    outages.failed(second)  # a second outage is logged again, once a loop retries
    assert len(caplog.records) == 2
    retry_level(second)
    assert len(caplog.records) == 3


def test_an_outage_nobody_retries_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """A one-shot command that fails says so in its error, not in a log line."""
    caplog.set_level(logging.DEBUG, logger="taskdb")
    outages = OutageLog("x", settle=0.0)
    outages.failed(_unavailable())
    outages.up()
    assert caplog.records == [] and not outages.down


def test_loops_log_outages_at_debug_and_other_failures_at_warning() -> None:
    assert is_outage(_unavailable()) and retry_level(_unavailable()) == logging.DEBUG
    other = StorageError("database error on x: relation missing")
    assert not is_outage(other) and retry_level(other) == logging.WARNING
    assert not is_outage(ValueError("x"))
