"""What every dashboard handler shares (pure wiring, no routes)."""

from __future__ import annotations

from dataclasses import dataclass

from jinja2 import Environment
from starlette.requests import Request

from taskdb.admin import Admin
from taskdb.web.broadcast import Broadcaster
from taskdb.web.metrics import DashboardMetrics


@dataclass
class Dashboard:
    """The state of one dashboard app (``request.app.state.dashboard``)."""

    admin: Admin
    broadcaster: Broadcaster
    templates: Environment
    metrics: DashboardMetrics
    token: str | None
    read_only: bool


def dashboard_of(request: Request) -> Dashboard:
    found: Dashboard = request.app.state.dashboard
    return found


def wants_json(path: str) -> bool:
    """Whether ``path`` (below the mount point) answers JSON rather than pages."""
    return path.startswith(("/api/", "/metrics"))


def base_of(request: Request) -> str:
    """The path the dashboard is mounted at (``""`` when served alone)."""
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/")
