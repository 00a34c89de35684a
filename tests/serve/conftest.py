"""Service fixtures: the artifacts are built once per session; servers are real uvicorn on a free 127.0.0.1 port."""

from __future__ import annotations

from typing import Callable, Iterator

import httpx
import pytest

from serve.app import create_app
from serve.settings import Settings
from tests.support.artifacts import Artifacts, build_artifacts
from tests.support.service import ADMIN_KEY, API_KEY, LiveServer


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Artifacts:
    return build_artifacts(tmp_path_factory.mktemp("serve-artifacts"))


@pytest.fixture(scope="session")
def make_settings(artifacts) -> Callable[..., Settings]:
    def make(**overrides) -> Settings:
        values = dict(index=artifacts.index, bundle=artifacts.bundle, index_root=artifacts.root, enable_probe=True,
                      api_key=API_KEY, admin_key=ADMIN_KEY, threads=2, probe_time_limit_s=30)
        return Settings(**(values | overrides))

    return make


@pytest.fixture(scope="session")
def server(make_settings) -> Iterator[LiveServer]:
    """The shared server: probes on, both keys set."""
    with LiveServer(create_app(make_settings())) as live:
        live.wait_ready()
        yield live


@pytest.fixture()
def client(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c
