"""A failed controller startup leaves nothing behind (federation.operator): kopf tries the startup
activity again after 60 s, and an attempt that kept its /metrics port bound made every later attempt
fail with "address already in use" instead of the first attempt's own error."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

from federation import operator
from fleet.apiserver import free_port


class FailingFeature:
    @staticmethod
    def register(registry: kopf.OperatorRegistry, holder: dict[str, Any]) -> None:
        pass

    @staticmethod
    async def install(controller: Any) -> None:
        raise RuntimeError("a feature that cannot install")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def test_a_failed_startup_fails_again_with_its_own_error_and_frees_its_port(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "hub",
        "clusters": [{"name": "hub", "cluster": {"server": "https://127.0.0.1:1", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "hub", "context": {"cluster": "hub", "user": "u"}}]}))
    port = free_port()
    monkeypatch.setattr(operator, "features", lambda: [FailingFeature])
    registry = operator.build_registry({"hub_id": "meshfed-hub", "kubeconfig": str(kubeconfig),
                                        "http_address": f"127.0.0.1:{port}"})
    # kopf calls it with more keywords (logger, memo, ...); meshfed's startup takes settings and **_
    startup: Any = next(h.fn for h in registry._activities.get_all_handlers() if str(h.activity) == "startup")
    for _ in range(2):  # kopf's retry: the same error again, not "address already in use"
        with pytest.raises(RuntimeError, match="a feature that cannot install"):
            await startup(settings=kopf.OperatorSettings())
        assert _bindable(port)  # the attempt's /metrics server is gone
