"""/probe: its budget comes from the bundle, its smallest-flip answer is the bisection's, not the budget asked for, and
it runs with the worker's torch thread count, set once at start-up (not by every request)."""

from __future__ import annotations

import time

import pytest
import torch
from fastapi.testclient import TestClient

from retrieval.atomic import atomic_path
from retrieval.protocol import PROFILES
from serve.app import create_app
from serve.routes import probe as probe_route
from tests.support.artifacts import write_index
from tests.support.service import API_KEY, png
from training.export import export_bundle

BUNDLE_EPS = 5 / 255
"""A training budget unlike any profile's, so a default taken from anywhere but the bundle shows."""


@pytest.fixture(scope="module")
def probe_client(artifacts, make_settings, tmp_path_factory):
    """The served model re-exported with its checkpoint recording eps 5/255, over a 300-image gallery."""
    root = tmp_path_factory.mktemp("probe-bundle")
    checkpoint = torch.load(artifacts.root.parent / "run" / "checkpoint.pt", weights_only=True)
    checkpoint["config"] = {**checkpoint["config"], "eps": BUNDLE_EPS}
    with atomic_path(root / "run" / "checkpoint.pt") as tmp:
        torch.save(checkpoint, tmp)
    bundle = export_bundle(root / "run", root / "bundle").path
    gallery = artifacts.queries[:150]
    index = root / "indexes" / "small"
    write_index(bundle, gallery, artifacts.query_labels[:150], index, [f"q{i}" for i in range(len(gallery))])
    settings = make_settings(index=index, bundle=bundle, index_root=root / "indexes", probe_max_steps=16)
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "service not ready within 60 s"
            time.sleep(0.02)
        yield client


def probe(client: TestClient, image: torch.Tensor, **fields) -> dict:
    data = {"attack": "GTT", "steps": "8", "top_k": "5", **{k: str(v) for k, v in fields.items()}}
    response = client.post("/probe", files={"image": ("q.png", png(image), "image/png")}, data=data,
                           headers={"X-API-Key": API_KEY})
    assert response.status_code == 200, response.text
    return response.json()


def test_default_eps_is_the_bundles_training_budget(probe_client, artifacts):
    assert BUNDLE_EPS != PROFILES["rob28"].eps
    assert probe(probe_client, artifacts.queries[160])["eps"] == pytest.approx(BUNDLE_EPS)


def test_smallest_flip_is_found_by_bisection_below_the_budget(probe_client, artifacts):
    eps = 77 / 255
    report = probe(probe_client, artifacts.queries[160], eps=eps)
    flip = report["flip"]
    assert report["top1_changed"] and report["eps"] == pytest.approx(eps)
    assert flip["trials"] > 0
    steps_on_grid = flip["min_flip_eps"] / flip["grid_step"]
    assert steps_on_grid == pytest.approx(round(steps_on_grid))
    assert flip["min_flip_eps"] <= eps / 2  # an undefended model flips far inside the 77/255 ball
    again = probe(probe_client, artifacts.queries[160], eps=flip["min_flip_eps"], steps=flip["steps_per_trial"])
    assert again["top1_changed"]  # the reported budget does flip the top-1


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
