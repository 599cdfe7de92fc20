"""The dashboard, HTTP API and Prometheus metrics (``taskdb dashboard``).

``create_app(db, token=None, read_only=False)`` returns a Starlette ASGI app:
serve it with uvicorn, or mount it in a FastAPI/Starlette service. See
:mod:`taskdb.web.app`.
"""

from taskdb.web.app import create_app
from taskdb.web.metrics import serve_worker_metrics
from taskdb.web.security import is_loopback

__all__ = ["create_app", "is_loopback", "serve_worker_metrics"]
