"""An App with a one-second schedule: ``taskdb scheduler`` in tests/integration/test_outage.py."""

from __future__ import annotations

import os
from datetime import datetime, timedelta

import taskdb

app = taskdb.App(os.environ["TASKDB_URL"])


@app.periodic(every=timedelta(seconds=1), name="beat")
@app.task(queue="beats", name="beat")
async def beat(tick: datetime) -> None: ...
