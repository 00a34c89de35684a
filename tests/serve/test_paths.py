"""serve.paths.inside, the answer to each kind of requested path: inside (resolved), escaping (403), unresolvable or
NUL (422), with the message a client reads."""

from __future__ import annotations

import pytest

from serve.errors import ServiceError
from serve.paths import inside


def _refusal(root, requested) -> ServiceError:
    with pytest.raises(ServiceError) as refused:
        inside(root, requested)
    return refused.value


def test_relative_and_absolute_paths_inside_the_root_resolve_with_symlinks(tmp_path):
    (tmp_path / "gen-1").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "gen-1", target_is_directory=True)
    assert inside(tmp_path, "gen-1") == (tmp_path / "gen-1").resolve()
    assert inside(tmp_path, str(tmp_path / "gen-1")) == (tmp_path / "gen-1").resolve()
    assert inside(tmp_path, "link") == (tmp_path / "gen-1").resolve()
    assert inside(tmp_path, "gen-1/../gen-1") == (tmp_path / "gen-1").resolve()


@pytest.mark.parametrize("requested", ["..", "/etc", "a/../../b"])
def test_escapes_are_403_naming_the_root(tmp_path, requested):
    error = _refusal(tmp_path, requested)
    assert (error.status, error.code) == (403, "path_not_allowed")
    assert error.message == f"path must lie inside the index root {tmp_path}"


def test_a_symlink_out_of_the_root_is_403(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "out").symlink_to(tmp_path, target_is_directory=True)
    assert (_refusal(root, "out").status, _refusal(root, "out").code) == (403, "path_not_allowed")


def test_nul_bytes_and_symlink_loops_are_422(tmp_path):
    nul = _refusal(tmp_path, "idx\x00")
    assert (nul.status, nul.code, nul.message) == (422, "invalid_path", "path contains a NUL byte")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    loop = _refusal(tmp_path, "loop")
    assert (loop.status, loop.code) == (422, "invalid_path")
    assert loop.message.startswith("path loop cannot be resolved")


@pytest.mark.parametrize(("requested", "status", "code", "message"), [
    ("a\x00b", 422, "invalid_path", "path contains a NUL byte"),
    ("../elsewhere", 403, "path_not_allowed", "path must lie inside the index root"),
])
def test_each_refusal_has_its_status_code_and_message(tmp_path, requested, status, code, message):
    with pytest.raises(ServiceError) as refused:
        inside(tmp_path, requested)
    assert (refused.value.status, refused.value.code) == (status, code)
    assert refused.value.message.startswith(message)


def test_a_path_inside_the_root_resolves(tmp_path):
    (tmp_path / "idx").mkdir()
    assert inside(tmp_path, "idx") == (tmp_path / "idx").resolve()
