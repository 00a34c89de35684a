"""serve.paths.inside: the status, code and message of each refusal."""

from __future__ import annotations

import pytest

from serve.errors import ServiceError
from serve.paths import inside


@pytest.mark.parametrize(("requested", "status", "code", "message"), [
    ("a\x00b", 422, "invalid_path", "path contains a NUL byte"),
    ("../elsewhere", 403, "path_not_allowed", "path must lie inside the index root"),
])
def test_refusals(tmp_path, requested, status, code, message):
    with pytest.raises(ServiceError) as refused:
        inside(tmp_path, requested)
    assert (refused.value.status, refused.value.code) == (status, code)
    assert refused.value.message.startswith(message)


def test_a_path_inside_the_root_resolves(tmp_path):
    (tmp_path / "idx").mkdir()
    assert inside(tmp_path, "idx") == (tmp_path / "idx").resolve()
