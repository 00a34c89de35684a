"""Issue 12: every error the service can answer is in serve.errors.ERROR_CODES, the README's table and OpenAPI, and
the limits /info advertises are the ones enforced."""

from __future__ import annotations

import re
from pathlib import Path

from serve.errors import _HTTP_CODES, _IMAGE_STATUS, ERROR_CODES

ROOT = Path(__file__).resolve().parents[2]
_RAISED = re.compile(r'(?:ServiceError|error_response|_refuse)\(\s*(\d{3}),\s*(?:"[^"]*",\s*)?"([a-z_]+)"')


def _answered() -> set[tuple[int, str]]:
    """(status, code) pairs the service's source can answer."""
    pairs = set(_IMAGE_STATUS.values()) | {(status, code) for status, code in _HTTP_CODES.items()}
    for path in (ROOT / "serve").rglob("*.py"):
        pairs |= {(int(status), code) for status, code in _RAISED.findall(path.read_text())}
    pairs.add((503, "too_many_connections"))  # serve.server's connection cap answers from a JSON literal
    return pairs


def test_every_error_the_code_answers_is_listed():
    listed = {(status, code) for status, codes in ERROR_CODES.items() for code in codes}
    assert _answered() - listed == set()
    assert len(_answered()) > 25  # the source scan still finds the errors


def test_the_readme_table_lists_every_error():
    readme = (ROOT / "README.md").read_text()
    rows = set(re.findall(r"^\| (\d{3}) \| `([a-z_]+)` \|", readme, flags=re.M))
    listed = {(str(status), code) for status, codes in ERROR_CODES.items() for code in codes}
    assert rows == listed


def test_openapi_documents_the_errors_of_each_route(client):
    document = client.get("/openapi.json").json()
    paths = document["paths"]
    expected = {("/search", "post"): {400, 408, 413, 415, 422, 431, 500, 503},
                ("/search/batch", "post"): {400, 408, 413, 415, 422, 431, 500, 503},
                ("/probe", "post"): {400, 401, 403, 404, 408, 413, 415, 422, 429, 431, 500, 503},
                ("/admin/reload", "post"): {401, 403, 408, 409, 413, 422, 431, 500, 503}}
    for (path, method), statuses in expected.items():
        documented = {int(s) for s in paths[path][method]["responses"] if s != "200"}
        assert documented >= statuses, (path, statuses - documented)
        for status in statuses:
            assert all(code in paths[path][method]["responses"][str(status)]["description"]
                       for code in ERROR_CODES[status])
    form = next(iter(paths["/probe"]["post"]["requestBody"]["content"].values()))["schema"]["$ref"]
    steps = document["components"]["schemas"][form.rsplit("/", 1)[1]]["properties"]["steps"]
    assert "maximum" not in steps  # the limit is the server's probe_max_steps, advertised by /info


def test_info_advertises_the_enforced_limits(client, server, artifacts):
    limits = client.get("/info").json()["limits"]
    settings = server.state.settings
    assert limits["probe_max_steps"] == settings.probe_max_steps and limits["max_batch"] == settings.max_batch
    assert limits["max_pixels"] == 2048 * 2048  # sized from the 28x28 model
    too_many = client.post("/probe", files={"image": ("q.png", b"x", "image/png")},
                           data={"steps": str(limits["probe_max_steps"] + 1)}, headers={"X-API-Key": "test-api-key"})
    assert too_many.status_code == 422 and too_many.json()["error"]["code"] == "too_many_steps"
