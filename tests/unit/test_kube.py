"""KubeClient pure helpers: the proxy decision made once per client (no per-request env lookup)."""

from __future__ import annotations

import pytest

from federation.kube import _proxy_for


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
