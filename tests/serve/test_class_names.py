"""Class names travel from the dataset through the index to every ranking the API returns (/search, /search/batch,
/probe), and an index built before names were recorded still serves, with class_name null."""

from __future__ import annotations

import httpx
import pytest

from retrieval.datasets import load_dataset
from serve.app import create_app
from tests.support.artifacts import as_built_before_class_names, write_index
from tests.support.service import API_KEY, LiveServer, png

FASHION_MNIST = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"]


def _upload(artifacts, n: int = 1) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (f"q{i}.png", png(image), "image/png")) for i, image in enumerate(artifacts.queries[:n])]


def _named_right(hits: list[dict]) -> bool:
    return bool(hits) and all(hit["class_name"] == FASHION_MNIST[hit["label"]] for hit in hits)


def test_search_batch_and_probe_hits_carry_the_class_name_of_their_label(client, artifacts):
    (_, image), = _upload(artifacts)
    single = client.post("/search", files={"image": image}, data={"top_k": "10"}).json()["results"]
    batch = client.post("/search/batch", files=_upload(artifacts, 2), data={"top_k": "5"}).json()["items"]
    probe = client.post("/probe", files={"image": image}, data={"attack": "QA-", "steps": "2", "top_k": "5"},
                        headers={"X-API-Key": API_KEY}).json()
    assert _named_right(single) and len({hit["label"] for hit in single}) > 1
    assert all(_named_right(item["results"]) for item in batch)
    assert _named_right(probe["clean"]) and _named_right(probe["adversarial"])


def test_openapi_documents_class_name_beside_label(client):
    hit = client.get("/openapi.json").json()["components"]["schemas"]["SearchHit"]["properties"]
    assert {"label", "class_name"} <= set(hit)


@pytest.fixture(scope="module")
def index_without_names(artifacts):
    """A gallery of the same model whose metadata has the layout from before class names were recorded."""
    test = load_dataset("fashion-mnist", "test")
    out = artifacts.root / "before-class-names"
    write_index(artifacts.bundle, test.tensors()[:200], test.labels[:200], out, [test.source(i) for i in range(200)],
                test.classes)
    as_built_before_class_names(out)
    return out


def test_an_index_built_before_class_names_serves_with_class_name_null(make_settings, artifacts, index_without_names):
    with LiveServer(create_app(make_settings(index=index_without_names, enable_probe=False))) as live:
        live.wait_ready()
        (_, image), = _upload(artifacts)
        response = httpx.post(f"{live.url}/search", files={"image": image}, data={"top_k": "5"})
    assert response.status_code == 200, response.text
    hits = response.json()["results"]
    assert len(hits) == 5 and all(isinstance(hit["label"], int) and hit["class_name"] is None for hit in hits)
