"""Prometheus metrics: the dashboard's ``/metrics`` (jobs per queue and status, lag,
completions and failures, run-time histogram) and ``taskdb worker --metrics-port``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import textwrap
import urllib.request
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

import taskdb
from tests.cli.helpers import ROOT, reap, taskdb_process
from tests.helpers import eventually
from tests.web.conftest import free_port
from tests.web.test_api import _fail, run_to_end


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def _ok(value: Any, ctx: taskdb.JobContext) -> Any:
    await asyncio.sleep(0.05)
    return value


async def test_dashboard_metrics(db: taskdb.Database, client: httpx.AsyncClient, app: Any) -> None:
    await taskdb.JobQueueClient(db, "waiting").submit({})
    first = await client.get("/metrics")
    assert first.status_code == 200
    assert first.headers["content-type"].startswith("text/plain")
    found = samples(first.text)
    assert found[("taskdb_jobs", (("queue", "waiting"), ("status", "PENDING")))] == 1
    assert found[("taskdb_queue_lag_seconds", (("queue", "waiting"),))] >= 0
    broadcaster = app.state.dashboard.broadcaster
    await eventually(lambda: asyncio.sleep(0, broadcaster.subscribers), bool)  # counting

    await run_to_end(db, "m", _ok)
    await run_to_end(db, "m", _fail)

    def counted(text: str) -> bool:
        s = samples(text)
        return s.get(("taskdb_job_run_seconds_count", (("queue", "m"),))) == 2

    text = (await eventually(lambda: client.get("/metrics"), lambda r: counted(r.text))).text
    found = samples(text)
    assert found[("taskdb_jobs_completed_total", (("queue", "m"),))] == 1
    assert found[("taskdb_jobs_failed_total", (("queue", "m"),))] == 1
    assert found[("taskdb_jobs", (("queue", "m"), ("status", "COMPLETED")))] == 1
    assert found[("taskdb_job_run_seconds_sum", (("queue", "m"),))] >= 0.05


HANDLER = """
async def handle(value, ctx):
    if value.get("fail"):
        raise ValueError("no")
    return value
"""


def test_taskdb_worker_serves_its_own_counters(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "metrics_handler.py").write_text(textwrap.dedent(HANDLER))
    port = free_port()
    proc = taskdb_process(
        "worker", "metrics_handler:handle", "-q", "w", "-c", "2", "--poll", "0.05",
        "--metrics-port", str(port), db_url=db_url, cwd=tmp_path,
    )  # fmt: skip
    try:
        with taskdb.connect(db_url) as db:
            jobs = taskdb.SyncJobQueueClient(db, "w")
            jobs.submit({"n": 1}).wait(timeout=30)
            failing = jobs.submit({"fail": True}, max_retries=0)
            with contextlib.suppress(taskdb.JobError):
                failing.wait(timeout=30)

        def scrape() -> dict[Any, float]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return samples(r.read().decode())

        found = asyncio.run(
            eventually(
                lambda: asyncio.to_thread(scrape),
                lambda s: (
                    s.get(("taskdb_worker_jobs_total", (("outcome", "failed"), ("queue", "w"))))
                    == 1
                ),
            )
        )
    finally:
        reap(proc)
        if proc.stdout is not None:
            proc.stdout.close()
    assert found[("taskdb_worker_jobs_total", (("outcome", "completed"), ("queue", "w")))] == 1
    assert found[("taskdb_worker_slots", (("queue", "w"),))] == 2
    assert found[("taskdb_worker_slots_busy", (("queue", "w"),))] == 0
    assert found[("taskdb_worker_handler_seconds_total", (("queue", "w"),))] > 0


async def test_the_grafana_example_charts_only_metrics_taskdb_exports(
    db: taskdb.Database, client: httpx.AsyncClient, app: Any
) -> None:
    from taskdb.queue import ServerStats
    from taskdb.web.metrics import WorkerCollector

    dashboard = json.loads((ROOT / "examples" / "grafana" / "dashboard.json").read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"taskdb_[a-z_]+", target["expr"])
    }
    await taskdb.JobQueueClient(db, "g").submit({})
    exported = {s[0] for s in samples((await client.get("/metrics")).text)}
    worker = WorkerCollector(lambda: [ServerStats("g", "w", 1)])
    exported |= {s.name for family in worker.collect() for s in family.samples}
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
    for family in app.state.dashboard.metrics.registry.collect():  # labelled, not yet seen
        exported |= {family.name + suffix for suffix in suffixes.get(family.type, [""])}
    assert used and used <= exported, used - exported
