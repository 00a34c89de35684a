"""/probe runs with the worker's torch thread count, set once at start-up (not by every request)."""

from __future__ import annotations

import time

import torch
from fastapi.testclient import TestClient

from serve.app import create_app
from serve.routes import probe as probe_route
from tests.support.service import API_KEY, png


def test_probe_uses_the_count_set_at_start_up_without_setting_it_per_request(make_settings, artifacts, monkeypatch):
    seen, calls = [], []
    run_probe = probe_route.run_probe
    monkeypatch.setattr(probe_route, "run_probe",
                        lambda engine, query, req: (seen.append(torch.get_num_threads()), run_probe(engine, query, req))[1])
    previous = torch.get_num_threads()
    torch.set_num_threads(3)  # whatever the process ran with before the service started
    try:
        with TestClient(create_app(make_settings(threads=1))) as client:
            deadline = time.monotonic() + 60
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "service not ready within 60 s"
                time.sleep(0.02)
            monkeypatch.setattr(torch, "set_num_threads", calls.append)
            for query in artifacts.queries[:2]:
                response = client.post("/probe", files={"image": ("q.png", png(query), "image/png")},
                                       data={"attack": "GTT", "steps": "1"}, headers={"X-API-Key": API_KEY})
                assert response.status_code == 200, response.text
    finally:
        monkeypatch.undo()
        torch.set_num_threads(previous)
    assert seen == [1, 1] and calls == []
