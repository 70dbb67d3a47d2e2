"""KubeClient pure helpers: the proxy decision made once per client (no per-request env lookup)."""

from __future__ import annotations

import pytest

from federation.kube import MIN_WATCH_TIMEOUT, _proxy_for, watch_timeout


@pytest.mark.parametrize(
    ("env", "host", "configured", "expected"),
    [
        ({}, "https://127.0.0.1:6443", None, None),
        ({"HTTPS_PROXY": "http://proxy:3128"}, "https://api.example:6443", None, "http://proxy:3128"),
        ({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "api.example"}, "https://api.example:6443", None, None),
        ({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": ".example"}, "https://api.example:6443", None, None),
        ({"HTTP_PROXY": "http://proxy:3128"}, "https://api.example:6443", None, None),
        ({"HTTPS_PROXY": "http://proxy:3128"}, "https://api.example:6443", "http://kubeconfig:8080",
         "http://kubeconfig:8080"),
    ],
)
def test_proxy_decision(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], host: str,
                        configured: str | None, expected: str | None) -> None:
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY",
                "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert _proxy_for(host, configured) == expected


def test_watch_timeouts_are_spread_over_five_to_ten_minutes() -> None:
    """Watches started together (a bulk plans a kind on every member at once) must not all end, re-watch
    and relist at the same instant: each asks for its own timeout in [300, 600) seconds."""
    assert watch_timeout(lambda: 0.0) == MIN_WATCH_TIMEOUT == 300
    assert watch_timeout(lambda: 0.999) == 599
    drawn = {watch_timeout() for _ in range(200)}
    assert all(300 <= t < 600 for t in drawn)
    assert len(drawn) > 100  # spread, not a handful of values
