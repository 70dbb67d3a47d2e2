"""KubeClient with a kubeconfig whose user runs an exec plugin (EKS, GKE, OIDC helpers): the plugin runs
again once the token it gave expires, so a long-running controller is not locked out when a short-lived
token ends. Real API server; the plugin hands out tokens of two ServiceAccounts in turn, so the API
server's SelfSubjectReview says which token a request carried."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from federation.kube import KubeClient
from fleet.testing import service_account_token, token_kubeconfig

from .conftest import ApiServer

NS = "exec-token"
# kubernetes-asyncio (like client-go) treats a token as expired 5 minutes before its expirationTimestamp.
SKEW = 300
VALID = 4  # seconds each token is used before the plugin must run again

PLUGIN = """\
import datetime, json, pathlib, sys
state = pathlib.Path(sys.argv[1])
data = json.loads(state.read_text())
token = data["tokens"][min(data["calls"], len(data["tokens"]) - 1)]
data["calls"] += 1
state.write_text(json.dumps(data))
expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=data["valid"])
print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential",
                  "status": {"token": token, "expirationTimestamp": expiry.strftime("%Y-%m-%dT%H:%M:%SZ")}}))
"""


async def sa_token(admin: KubeClient, name: str) -> str:
    await admin.apply(f"/api/v1/namespaces/{NS}/serviceaccounts/{name}",
                      {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": NS}},
                      field_manager="test")
    return await service_account_token(admin, NS, name)


async def whoami(client: KubeClient) -> str:
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    resp: dict[str, Any] = await client.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                                                body=body)
    return str(resp["status"]["userInfo"]["username"])


async def test_an_expired_exec_token_is_fetched_again(apiserver: ApiServer, tmp_path: Path) -> None:
    admin = await apiserver.admin_client()
    try:
        await admin.apply(f"/api/v1/namespaces/{NS}", {"apiVersion": "v1", "kind": "Namespace",
                                                       "metadata": {"name": NS}}, field_manager="test")
        first, second = await sa_token(admin, "first"), await sa_token(admin, "second")
        state = tmp_path / "plugin-state.json"
        state.write_text(json.dumps({"tokens": [first, second], "calls": 0, "valid": SKEW + VALID}))
        plugin = tmp_path / "plugin.py"
        plugin.write_text(PLUGIN)
        config = token_kubeconfig(apiserver.proc, "robot", "unused")
        config["users"][0]["user"] = {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1",
                                               "command": sys.executable, "args": [str(plugin), str(state)],
                                               "interactiveMode": "Never"}}
        client = await KubeClient.from_kubeconfig_dict(config, "exec-user", attempts=1)
        try:
            started = time.monotonic()
            assert await whoami(client) == f"system:serviceaccount:{NS}:first"
            assert await whoami(client) == f"system:serviceaccount:{NS}:first"
            assert json.loads(state.read_text())["calls"] == 1, "a valid token is reused, not fetched per request"
            await asyncio.sleep(max(0.0, started + VALID + 0.5 - time.monotonic()))  # the first token expires
            assert await whoami(client) == f"system:serviceaccount:{NS}:second", "the expired token was sent"
            assert json.loads(state.read_text())["calls"] == 2, "the plugin should have run once more"
        finally:
            await client.close()
    finally:
        await admin.close()

