"""The typed tasks behind the web examples (``examples/fastapi_app.py`` and
``examples/flask_app.py``): the web processes defer them, worker processes run them.

``app`` opens ``TASKDB_URL`` (else ``sqlite:///taskdb.sqlite3``) on first use. Run
a worker, as many as you like, on any machine sharing the database::

    export TASKDB_URL=postgresql://postgres@127.0.0.1:5432/app   # or leave the SQLite default
    taskdb migrate
    taskdb worker examples.tasks:app --concurrency 4

It serves every queue of the app's tasks (``images`` and ``text``; ``-q`` picks).
Each task's signature is its payload schema: ``defer`` refuses a wrong argument
with ``taskdb.InvalidJobInput`` before anything is stored, and the worker checks
the stored payload again before calling the function.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections import Counter
from typing import Annotated

from pydantic import BaseModel, Field

import taskdb

app = taskdb.App()

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp")

ImageUrl = Annotated[str, Field(pattern=r"^https?://\S+$", max_length=2048)]
Width = Annotated[int, Field(ge=16, le=4096)]
Text = Annotated[str, Field(min_length=1, max_length=1_000_000)]


class Thumbnail(BaseModel):
    """What ``resize`` made."""

    source: str
    width: int
    height: int
    path: str


class WordCount(BaseModel):
    """What ``word_count`` found."""

    words: int
    distinct: int
    most_common: list[str]


@app.task(queue="images", max_retries=2)
async def resize(url: ImageUrl, width: Width = 256, *, ctx: taskdb.JobContext) -> Thumbnail:
    """Make a thumbnail ``width`` pixels wide of the image at ``url`` (an async task:
    it runs on the worker's event loop). Not an image: fails without a retry."""
    if not url.lower().split("?", 1)[0].endswith(IMAGE_SUFFIXES):
        raise taskdb.PermanentJobError(f"{url} is not an image ({', '.join(IMAGE_SUFFIXES)})")
    await ctx.update_progress(10, "downloading")
    await asyncio.sleep(0.05)  # the download would go here (an HTTP client)
    await ctx.update_progress(60, "resizing")
    await asyncio.sleep(0.05)  # and the resize here (Pillow, in a thread)
    name = hashlib.sha256(f"{url}@{width}".encode()).hexdigest()[:16]
    return Thumbnail(source=url, width=width, height=width * 3 // 4, path=f"thumbs/{name}.webp")


@app.task(queue="text")
def word_count(text: Text, top: Annotated[int, Field(ge=1, le=100)] = 3) -> WordCount:
    """Count the words of ``text`` (a plain ``def`` task: it runs in the worker's
    thread pool, so CPU-bound or blocking code is fine)."""
    words = re.findall(r"[\w']+", text.lower())
    counts = Counter(words)
    return WordCount(
        words=len(words),
        distinct=len(counts),
        most_common=[word for word, _ in counts.most_common(top)],
    )
