"""The example worker module runs under a real `taskdb worker` process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_thumbnail_example_end_to_end(fresh_sqlite_url: str) -> None:
    env = {**os.environ, "TASKDB_URL": fresh_sqlite_url, "PYTHONPATH": str(ROOT)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "taskdb", "worker", "examples.thumbnails:make_thumbnail",
         "--queue", "thumbnails", "--concurrency", "4", "--poll", "0.05"],
        cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        producer = subprocess.run(
            [sys.executable, "-m", "examples.thumbnails", "cat.png", "dog.png"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert producer.returncode == 0, producer.stderr
        lines = producer.stdout.splitlines()
        assert [line.split(" ", 1)[1] for line in lines] == [
            "{'thumbnail': 'cat.png.thumb.png'}",
            "{'thumbnail': 'dog.png.thumb.png'}",
        ]
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=30)
    assert worker.returncode == 0, stderr
