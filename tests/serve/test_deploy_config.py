"""deploy/nginx.conf repeats the service's transport limits at the edge; these tests keep the two in step, and keep
nginx's idle upstream connections shorter-lived than the service's (else a POST sent as the service closes its
connection is lost as a 502)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from serve.settings import Settings

CONF = Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf"
UNITS = {"ms": 0.001, "s": 1, "m": 60}


def _seconds(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(ms|s|m)?", value).groups()
    return int(number) * UNITS[unit or "s"]


def _directives(text: str) -> dict[str, str]:
    """name -> value of the one-value directives in `text` (comments dropped)."""
    text = re.sub(r"#.*", "", text)
    return dict(re.findall(r"^\s*(\w+)\s+([^\s;]+);", text, flags=re.M))


def _blocks() -> tuple[dict[str, str], dict[str, str]]:
    """(the upstream block's directives, the server block's own directives)."""
    text = CONF.read_text()
    upstream = re.search(r"upstream\s+\w+\s*\{(.*?)\}", text, flags=re.S).group(1)
    server = re.search(r"server\s*\{(.*)\}", text, flags=re.S).group(1)
    return _directives(upstream), _directives(re.sub(r"location[^{]*\{.*?\}", "", server, flags=re.S))


def _default(field: str):
    return Settings.model_fields[field].default


def test_nginx_drops_idle_upstream_connections_before_the_service_does():
    upstream, _ = _blocks()
    assert "keepalive_timeout" in upstream, "without it nginx keeps idle upstream connections 60 s"
    assert _seconds(upstream["keepalive_timeout"]) < _default("keep_alive_s")


@pytest.mark.parametrize("directive, field", [("client_header_timeout", "header_timeout_s"),
                                              ("client_body_timeout", "body_timeout_s")])
def test_nginx_repeats_the_service_timeouts(directive, field):
    _, server = _blocks()
    assert _seconds(server[directive]) == _default(field)


def test_nginx_waits_for_a_probe_longer_than_its_time_limit():
    _, server = _blocks()
    assert _seconds(server["proxy_read_timeout"]) > _default("probe_time_limit_s")


def test_nginx_limits_each_client_on_every_route_it_proxies():
    """Per-client connections at the server level, and a per-client request rate in every location that proxies
    to the service (a location without one lets a single client spend every worker's decoders)."""
    text = re.sub(r"#.*", "", CONF.read_text())
    assert re.search(r"^\s*limit_conn\s+\w+\s+\d+;", text, flags=re.M)
    locations = re.findall(r"location\s+([^{]*)\{(.*?)\}", text, flags=re.S)
    proxied = [(where.strip(), body) for where, body in locations if "proxy_pass" in body]
    assert len(proxied) >= 4
    for where, body in proxied:
        assert "limit_req " in body or "deny all" in body, where
