"""The README's Python quickstarts run as written."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    return [
        b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "asyncio.run(" in b
    ]


def _expected_stream_output() -> str:
    digest = hashlib.sha256(b"".join(bytes([i]) * 2**20 for i in range(3))).hexdigest()
    return f"taskdb/CacheRef 3145728 image/png\n{digest[:16]}\nfollowed from anywhere"


@pytest.mark.parametrize(
    ("index", "expected"),
    [
        (0, "name='cat.thumb.png' width=128"),
        (1, "{'thumbnail': 'cat.thumb.png'}"),
        (2, _expected_stream_output()),
    ],
)
def test_quickstart_runs(tmp_path: Path, index: int, expected: str) -> None:
    script = tmp_path / "quickstart.py"
    script.write_text(_blocks()[index])
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_readme_names_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
