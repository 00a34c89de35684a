"""Train -> export -> index -> serve through a real uvicorn server, then search and probe over HTTP."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from serve.app import create_app, default_loader
from tests.support.service import API_KEY, LiveServer, png


def test_readyz_is_503_until_loaded_and_warmed(make_settings):
    release = threading.Event()

    def gated_loader(settings):
        release.wait(30)
        return default_loader(settings)

    with LiveServer(create_app(make_settings(), loader=gated_loader)) as live:
        before = httpx.get(f"{live.url}/readyz")
        search_before = httpx.post(f"{live.url}/search", files={"image": ("q.png", b"x", "image/png")})
        assert httpx.get(f"{live.url}/livez").status_code == 200
        release.set()
        live.wait_ready()
        after = httpx.get(f"{live.url}/readyz")
    assert before.status_code == 503 and before.json()["error"]["code"] == "not_ready"
    assert search_before.status_code == 503
    assert after.status_code == 200


def test_search_returns_same_class_top1_for_most_queries(client, artifacts):
    hits = 0
    queries = artifacts.queries[:40]
    for image, label in zip(queries, artifacts.query_labels[: len(queries)].tolist()):
        sent = time.perf_counter()
        response = client.post("/search", files={"image": ("q.png", png(image), "image/png")}, data={"top_k": "5"})
        round_trip_ms = (time.perf_counter() - sent) * 1000
        assert response.status_code == 200, response.text
        body = response.json()
        assert [r["rank"] for r in body["results"]] == [1, 2, 3, 4, 5]
        assert body["model_id"] and body["index_id"]
        assert 0 < body["took_ms"] <= round_trip_ms  # the server's own share of this request
        hits += body["results"][0]["label"] == label
    assert hits / len(queries) >= 0.6


def test_batch_search_matches_single_searches(client, artifacts):
    files = [("images", (f"q{i}.png", png(img), "image/png")) for i, img in enumerate(artifacts.queries[:3])]
    batch = client.post("/search/batch", files=files, data={"top_k": "3"}).json()
    single = client.post("/search", files={"image": files[1][1]}, data={"top_k": "3"}).json()
    assert len(batch["items"]) == 3
    assert [r["id"] for r in batch["items"][1]["results"]] == [r["id"] for r in single["results"]]


def test_probe_flips_top1_of_undefended_model(client, artifacts):
    response = client.post(
        "/probe",
        files={"image": ("q.png", png(artifacts.queries[0]), "image/png")},
        data={"attack": "GTT", "eps": str(77 / 255), "steps": "32", "top_k": "5", "return_image": "true"},
        headers={"X-API-Key": API_KEY},
    )
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["top1_changed"] is True
    assert report["clean"][0]["id"] != report["adversarial"][0]["id"]
    assert report["clean_top1_rank_after"] > 1
    assert 0 < report["embedding_shift"] <= 2
    assert 0 <= report["overlap_at_k"] < 1
    flip = report["flip"]
    assert flip["min_flip_eps"] is not None and 0 < flip["min_flip_eps"] <= 77 / 255 + 1e-9
    assert report["adversarial_image_png"]


@pytest.mark.parametrize("schedule", ["apgd", "fixed"])
def test_probe_runs_the_schedule_it_was_asked_for(client, artifacts, schedule):
    response = client.post(
        "/probe", files={"image": ("q.png", png(artifacts.queries[1]), "image/png")},
        data={"attack": "QA-", "steps": "8", "top_k": "3", "schedule": schedule}, headers={"X-API-Key": API_KEY})
    assert response.status_code == 200, response.text
    assert response.json()["schedule"] == schedule


def test_probe_refuses_an_unknown_schedule(client, artifacts):
    response = client.post(
        "/probe", files={"image": ("q.png", png(artifacts.queries[1]), "image/png")},
        data={"attack": "QA-", "steps": "8", "schedule": "adam"}, headers={"X-API-Key": API_KEY})
    assert response.status_code == 422


def test_info_describes_model_and_index(client, artifacts):
    info = client.get("/info").json()
    assert info["model"]["arch"] == "c2f2" and info["model"]["method"] == "N/A[R]"
    assert info["index"]["count"] == 1000 and info["index"]["dim"] == 64
    assert set(info["attacks"]) >= {"QA-", "QA+", "ES", "GTT"}


def test_metrics_count_requests_by_route_and_status(client):
    client.get("/livez")
    text = client.get("/metrics").text
    assert 'rr_http_requests_total{method="GET",route="/livez",status="200"}' in text
    assert "rr_index_size 1000.0" in text
    assert "rr_embed_duration_seconds_bucket" in text
