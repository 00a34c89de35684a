"""API and admin keys, compared in constant time."""

from __future__ import annotations

import hmac

from pydantic import SecretStr

from serve.errors import ServiceError


def check_key(configured: SecretStr | None, given: str | None, *, header: str, open_when_unset: bool) -> None:
    """401 without the key, 403 with a wrong one. With no key configured the route is open or closed (403)."""
    if configured is None:
        if open_when_unset:
            return
        raise ServiceError(403, "key_not_configured", f"this route is closed: the server has no key for {header}")
    if not given:
        raise ServiceError(401, "missing_key", f"missing {header} header", headers={"WWW-Authenticate": header})
    if not hmac.compare_digest(given.encode(), configured.get_secret_value().encode()):
        raise ServiceError(403, "wrong_key", f"wrong {header}")
