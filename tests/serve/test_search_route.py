"""/search is answered by a plain ASGI route (serve.routes.search) yet keeps FastAPI's contract: the query string's
top_k is bounded as the form's is, other methods get 405, the answer is the documented SearchResponse, OpenAPI still
describes the route, and metrics count it under its route template."""

from __future__ import annotations

import pytest

from serve.schemas import SearchResponse
from tests.support.service import png


@pytest.mark.parametrize("top_k", ["0", "101", "ten", "", "9" * 5000, "-1", "1.5"])
def test_a_query_string_top_k_out_of_bounds_is_422_before_any_work(client, artifacts, top_k):
    response = client.post(f"/search?top_k={top_k}", content=png(artifacts.queries[0]),
                           headers={"Content-Type": "image/png"})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_request"
    assert "top_k" in response.json()["error"]["message"]


def test_other_methods_on_search_get_405(client):
    response = client.get("/search")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert response.headers["Allow"] == "POST"


def test_the_answer_is_the_documented_model_and_counted_under_its_route(client, artifacts):
    response = client.post("/search?top_k=3", content=png(artifacts.queries[0]), headers={"Content-Type": "image/png"})
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
    answer = response.json()
    assert set(answer) == set(SearchResponse.model_fields)
    assert SearchResponse.model_validate(answer).model_dump(mode="json") == answer
    assert [hit["rank"] for hit in answer["results"]] == [1, 2, 3]
    assert response.headers["X-Request-ID"] and response.headers["X-Content-Type-Options"] == "nosniff"
    metrics = client.get("/metrics").text
    assert 'rr_http_requests_total{method="POST",route="/search",status="200"}' in metrics


def test_openapi_still_describes_search(client):
    document = client.get("/openapi.json").json()
    operation = document["paths"]["/search"]["post"]
    (top_k,) = [p for p in operation["parameters"] if p["name"] == "top_k"]
    assert top_k["in"] == "query" and top_k["schema"]["minimum"] == 1 and top_k["schema"]["maximum"] == 100
    assert set(operation["requestBody"]["content"]) == {"multipart/form-data", "image/*"}
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["$ref"].endswith("/SearchResponse")
