"""The CLI as a new user meets it (subprocesses of `meshfed` and `kubectl meshfed`): every mistake is one
line on stderr naming what was wrong and what to do, exit code 1 (2 for usage), no traceback (unless
--debug); kubectl's conventions (--context, a merged KUBECONFIG, -n from the context's namespace);
`register` embeds certificates, refuses credentials the controller's Pod cannot use and sets istiod,
gatewayStats and taints; the controller logs in (kopf and its own client) through the one loader, with
relative certificate paths resolved against the kubeconfig's directory.

The mistakes that need no API server use an unreachable address; the others run against the real API
server of tests/integration/conftest.py (403: a client certificate of a user without RBAC)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleet import REPO, pki
from fleet.testing import ControllerProcess, tls_gateway_template, wait_status
from tests.integration.conftest import ApiServer

AP = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/accesspoints/{name}"


def meshfed(*args: str, env: dict[str, str] | None = None, cwd: Path | str = REPO,
            kubectl: bool = False) -> subprocess.CompletedProcess[str]:
    module = "cli.kubectl" if kubectl else "cli"
    base = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, env={**base, "PYTHONPATH": str(REPO), **(env or {})})


def one_line_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    err = proc.stderr.strip()
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert err and "\n" not in err, proc.stderr
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kubeconfig(path: Path, server: str, user: dict[str, Any] | None = None, namespace: str | None = None,
               cluster: dict[str, Any] | None = None) -> Path:
    context: dict[str, Any] = {"cluster": "c", "user": "u"}
    if namespace:
        context["namespace"] = namespace
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "ctx",
        "clusters": [{"name": "c", "cluster": {"server": server, **(cluster or {"insecure-skip-tls-verify": True})}}],
        "users": [{"name": "u", "user": user or {"token": "t"}}],
        "contexts": [{"name": "ctx", "context": context}]}))
    return path


@pytest.fixture
def unreachable(tmp_path: Path) -> Path:
    return kubeconfig(tmp_path / "unreachable", f"https://127.0.0.1:{closed_port()}")


REGISTER = ("register", "m1", "--region", "eu", "--zone", "eu-1")


# ---- no API server needed ----

@pytest.mark.parametrize(("args", "code", "needle"), [
    ((*REGISTER, "--member-kubeconfig", "{kc}", "--label", "foo"), 2, "--label: 'foo' is not KEY=VALUE"),
    ((*REGISTER, "--member-kubeconfig", "{kc}", "--label", "bad key=x"), 2, "label key 'bad key'"),
    ((*REGISTER, "--member-kubeconfig", "{kc}", "--taint", "dedicated=gw:Sometimes"), 2,
     "the effect must be NoSchedule or NoExecute"),
    ((*REGISTER, "--member-kubeconfig", "{kc}", "--istiod-url", "istiod:15014"), 2,
     "--istiod-url/--istiod-service: 'istiod:15014' is not an http(s)://HOST[:PORT] base URL"),
    ((*REGISTER, "--member-kubeconfig", "{kc}", "--istiod-url", "http://i:15014", "--istiod-service"), 2,
     "not allowed with argument"),
    ((*REGISTER, "--member-kubeconfig", "{kc}", "--gateway-stats", "ftp://gw"), 2, "neither an http(s) URL nor pods"),
    ((*REGISTER, "--member-kubeconfig", "{tmp}/nope"), 1, "check --member-kubeconfig"),
    (("register", "m1", "--member-kubeconfig", "{kc}"), 2, "required: --region, --zone"),
    (("controller", "--log-level", "loud"), 2, "--log-level: invalid choice: 'loud'"),
    (("controller", "--workers", "0"), 2, "--workers: 0 must be 1 or more"),
    (("controller", "--kubeconfig", "{kc}", "--context", "nope"), 1, "context 'nope' is not in"),
    (("controller", "--hub-id", ""), 2, "--hub-id: '' is not a label value"),
    (("controller", "--http-address", "8081"), 2, "--http-address: '8081' is not HOST:PORT"),
    (("controller", "--liveness", "0.0.0.0:8080"), 2, "--liveness: '0.0.0.0:8080' is not an http(s) URL"),
    (("controller", "--kubeconfig", "{tmp}/list.yaml"), 1, "list.yaml is not a kubeconfig"),
    (("controller", "--context", "x"), 2, "--context needs --kubeconfig"),
    (("undo", "checkout", "--to-revision", "-1"), 2, "--to-revision: -1 must be 0 or more"),
    (("approve", "checkout", "--wave", "0"), 2, "--wave: 0 must be 1 or more"),
    (("promote", "checkout", "--kubeconfig", "{kc}"), 2, "pass --full"),
    (("status",), 2, "required: name"),
    (("status", "checkout", "--kubeconfig", "{tmp}/nope"), 1, "kubeconfig {tmp}/nope does not exist"),
    (("status", "checkout", "--kubeconfig", "{kc}", "--context", "zz"), 1, "context 'zz' is not in"),
    (("status", "checkout", "--kubeconfig", "{kc}"), 1, "cannot reach the hub API server"),
    (("shards", "--kubeconfig", "{kc}"), 1, "cannot reach the hub API server"),
    (("history", "checkout", "--kubeconfig", "{kc}"), 1, "cannot reach the hub API server"),
    (("fleet", "stop-member", "typo", "--dir", "{tmp}/fleet"), 1, "no member 'typo' in the fleet"),
    (("fleet", "kubeconfig", "typo", "--dir", "{tmp}/fleet"), 1, "no cluster 'typo' in the fleet"),
    (("fleet", "stop-member", "typo", "--dir", "{tmp}/empty"), 1, "needs a running fleet"),
    (("crds", "--out", "/proc/meshfed-crds"), 1, "/proc/meshfed-crds"),
    (("sds", "--kubeconfig", "{tmp}/nope", "--listen", "unix:{tmp}/sds.sock"), 1,
     "kubeconfig {tmp}/nope does not exist"),
    (("sds", "--dir", "{tmp}", "--listen", "127.0.0.1:0"), 2, "refusing plaintext TCP listener"),
])
def test_bad_input_is_one_line(tmp_path: Path, unreachable: Path, args: tuple[str, ...], code: int,
                               needle: str) -> None:
    fleet_dir = tmp_path / "fleet"
    fleet_dir.mkdir()
    cluster = {"role": "member", "dir": str(tmp_path), "port": 1, "etcd_port": 2, "peer_port": 3}
    (fleet_dir / "fleet.json").write_text(json.dumps({"hub": {**cluster, "name": "hub", "role": "hub"},
                                                      "members": [{**cluster, "name": "member-1"}]}))
    (tmp_path / "list.yaml").write_text("- not\n- a kubeconfig\n")
    fill = {"kc": str(unreachable), "tmp": str(tmp_path)}
    err = one_line_error(meshfed(*(a.format(**fill) for a in args)), code, needle.format(**fill))
    if "no member" in needle:
        assert "(members: member-1)" in err


def test_kubectl_plugin_errors_are_one_line(unreachable: Path) -> None:
    one_line_error(meshfed("shards", "--kubeconfig", str(unreachable), kubectl=True), 1,
                   "kubectl meshfed: cannot reach the hub API server")
    one_line_error(meshfed("status", "checkout", kubectl=True, env={"KUBECONFIG": str(unreachable)}), 1,
                   "cannot reach the hub API server")
    one_line_error(meshfed("controller", kubectl=True), 2, "invalid choice: 'controller'")


def test_no_kubeconfig_at_all(tmp_path: Path) -> None:
    one_line_error(meshfed("status", "checkout", env={"HOME": str(tmp_path)}), 1,
                   f"KUBECONFIG is not set and {tmp_path}/.kube/config does not exist")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    proc = meshfed("--debug", "status", "checkout", "--kubeconfig", str(tmp_path / "nope"))
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "KubeconfigError" in proc.stderr
    proc = meshfed("status", "checkout", "--kubeconfig", str(tmp_path / "nope"), "--debug")
    assert "Traceback" in proc.stderr


@pytest.mark.parametrize(("user", "needle"), [
    ({"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "gke-gcloud-auth-plugin"}},
     "exec plugin 'gke-gcloud-auth-plugin'"),
    ({"auth-provider": {"name": "oidc", "config": {"id-token": "x"}}}, "'oidc' auth provider"),
    ({"tokenFile": "token"}, "is a file of this machine"),
])
def test_register_refuses_credentials_the_controller_cannot_use(tmp_path: Path, unreachable: Path,
                                                               user: dict[str, Any], needle: str) -> None:
    (tmp_path / "token").write_text("t")
    member = kubeconfig(tmp_path / "member", "https://127.0.0.1:1", user=user)
    one_line_error(meshfed(*REGISTER, "--member-kubeconfig", str(member), "--kubeconfig", str(unreachable)), 1,
                   needle, f"--member-kubeconfig {member} (context 'ctx')")


def test_register_names_an_unreachable_member(tmp_path: Path, unreachable: Path) -> None:
    member = kubeconfig(tmp_path / "member", f"https://127.0.0.1:{closed_port()}")
    one_line_error(meshfed(*REGISTER, "--member-kubeconfig", str(member), "--kubeconfig", str(unreachable)), 1,
                   "member cluster m1", "unreachable", "check --member-kubeconfig/--member-context")


# ---- against the real API server ----

def split_admin(server: ApiServer, directory: Path) -> dict[str, Any]:
    """The admin kubeconfig's cluster and user with their certificates in files next to it (relative
    names), as many real kubeconfigs are."""
    admin = yaml.safe_load(server.kubeconfig.read_text())
    cluster, user = admin["clusters"][0]["cluster"], admin["users"][0]["user"]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.crt").write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    (directory / "admin.crt").write_bytes(base64.b64decode(user["client-certificate-data"]))
    pki.write_private(directory / "admin.key", base64.b64decode(user["client-key-data"]))
    return {"server": cluster["server"], "cluster": {"certificate-authority": "ca.crt"},
            "user": {"client-certificate": "admin.crt", "client-key": "admin.key"}}


def nobody_kubeconfig(server: ApiServer, path: Path) -> Path:
    """A client certificate for a user no RBAC rule names, signed by the API server's client CA."""
    pki_dir = server.proc.path / "pki"
    ca = pki.KeyPair((pki_dir / "ca.crt").read_bytes(), (pki_dir / "ca.key").read_bytes())
    nobody = pki.issue(ca, "nobody")
    admin = yaml.safe_load(server.kubeconfig.read_text())
    b64 = base64.b64encode
    return kubeconfig(path, admin["clusters"][0]["cluster"]["server"],
                      cluster={"certificate-authority-data": admin["clusters"][0]["cluster"][
                          "certificate-authority-data"]},
                      user={"client-certificate-data": b64(nobody.cert_pem).decode(),
                            "client-key-data": b64(nobody.key_pem).decode()})


async def test_forbidden_is_one_line(apiserver: ApiServer, tmp_path: Path) -> None:
    nobody = str(nobody_kubeconfig(apiserver, tmp_path / "nobody"))
    for proc in (
        await asyncio.to_thread(meshfed, "status", "checkout", "--kubeconfig", nobody),
        await asyncio.to_thread(meshfed, "shards", "--kubeconfig", nobody, kubectl=True),
        await asyncio.to_thread(meshfed, "approve", "checkout", "--kubeconfig", nobody, "-n", "payments"),
        await asyncio.to_thread(meshfed, *REGISTER, "--member-kubeconfig", nobody, "--kubeconfig", nobody),
    ):
        one_line_error(proc, 1, "refused by the API server (403 Forbidden):", 'User "nobody" cannot',
                       "ask a hub admin")


async def test_merged_kubeconfig_context_and_namespace(apiserver: ApiServer, tmp_path: Path) -> None:
    ns = f"cli-{uuid.uuid4().hex[:6]}"
    admin = await apiserver.admin_client()
    try:
        await admin.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                  "metadata": {"name": ns}}, field_manager="test")
        await admin.create(AP.format(ns=ns, name=""), {
            "apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPoint", "metadata": {"name": "checkout"},
            "spec": {"template": tls_gateway_template("shop.example", "shop")}}, field_manager="test")
    finally:
        await admin.close()
    parts = split_admin(apiserver, tmp_path / "creds")
    # KUBECONFIG: a file with the contexts only, then one (in another directory) with cluster and user
    contexts = tmp_path / "contexts"
    contexts.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "team",
        "contexts": [{"name": "team", "context": {"cluster": "hub", "user": "admin", "namespace": ns}},
                     {"name": "plain", "context": {"cluster": "hub", "user": "admin"}}]}))
    creds = tmp_path / "creds" / "config"
    creds.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "plain",
        "clusters": [{"name": "hub", "cluster": {"server": parts["server"], **parts["cluster"]}}],
        "users": [{"name": "admin", "user": parts["user"]}]}))
    env = {"KUBECONFIG": os.pathsep.join([str(contexts), str(tmp_path / "missing"), str(creds)])}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()  # relative certificate names resolve against creds/, not the working directory

    ok = await asyncio.to_thread(meshfed, "status", "checkout", env=env, cwd=elsewhere)
    assert ok.returncode == 0, ok.stderr
    assert f"AccessPoint {ns}/checkout" in ok.stdout  # -n defaulted to the context's namespace
    ok = await asyncio.to_thread(meshfed, "status", "checkout", env=env, cwd=elsewhere, kubectl=True)
    assert ok.returncode == 0 and f"AccessPoint {ns}/checkout" in ok.stdout, ok.stderr
    # --context plain has no namespace: default, where there is no such AccessPoint
    one_line_error(await asyncio.to_thread(meshfed, "status", "checkout", "--context", "plain", env=env,
                                           cwd=elsewhere), 1, "AccessPoint default/checkout not found")
    ok = await asyncio.to_thread(meshfed, "history", "checkout", "--context", "plain", "-n", ns, env=env)
    assert ok.returncode == 0, ok.stderr
    # undo without a previous revision: one line naming why (not "revision 0 ...")
    one_line_error(await asyncio.to_thread(meshfed, "undo", "checkout", env=env), 1,
                   f"AccessPoint {ns}/checkout: undo: there is no previous revision")
    one_line_error(await asyncio.to_thread(meshfed, "undo", "checkout", "--to-revision", "7", env=env), 1,
                   "revision 7 is not in the history")
    one_line_error(await asyncio.to_thread(meshfed, "promote", "checkout", "--full", env=env), 1,
                   "has no rollout yet")


async def test_register_embeds_certificates_and_sets_istiod_stats_and_taints(apiserver: ApiServer,
                                                                             tmp_path: Path) -> None:
    parts = split_admin(apiserver, tmp_path / "member")
    member = kubeconfig(tmp_path / "member" / "config", parts["server"], user=parts["user"],
                        cluster=parts["cluster"])
    name = f"m-{uuid.uuid4().hex[:6]}"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = await asyncio.to_thread(
        meshfed, "register", name, "--member-kubeconfig", str(member), "--region", "eu", "--zone", "eu-1",
        "--label", "tier=prod", "--istiod-service", "--gateway-stats", "pods:istio-ingress:app=gw:15000",
        "--taint", "dedicated=edge:NoExecute", "--taint", "maintenance", "--kubeconfig", str(apiserver.kubeconfig),
        cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    assert f"registered MemberCluster {name}" in proc.stdout
    admin = await apiserver.admin_client()
    try:
        mc = await admin.get(f"/apis/meshfed.io/v1alpha1/memberclusters/{name}")
        secret = await admin.get(f"/api/v1/namespaces/meshfed-system/secrets/{name}-kubeconfig")
    finally:
        await admin.close()
    assert mc is not None and secret is not None
    assert mc["metadata"]["labels"] == {"tier": "prod"}
    assert mc["spec"]["istiod"] == {"service": {"namespace": "istio-system", "name": "istiod", "port": 15014}}
    assert mc["spec"]["gatewayStats"] == {"pods": {"namespace": "istio-ingress", "selector": {"app": "gw"},
                                                   "port": 15000}}
    assert mc["spec"]["taints"] == [{"key": "dedicated", "value": "edge", "effect": "NoExecute"},
                                    {"key": "maintenance", "effect": "NoSchedule"}]
    stored = yaml.safe_load(base64.b64decode(secret["data"]["kubeconfig"]))
    (cluster,), (user,) = stored["clusters"], stored["users"]
    assert set(cluster["cluster"]) == {"server", "certificate-authority-data"}
    assert set(user["user"]) == {"client-certificate-data", "client-key-data"}
    assert base64.b64decode(user["user"]["client-key-data"]) == (tmp_path / "member" / "admin.key").read_bytes()


async def test_controller_logs_in_with_relative_certificate_paths(apiserver: ApiServer, tmp_path: Path) -> None:
    """kopf's login and the controller's own client both come from the one loader: a kubeconfig naming
    its certificates relative to its own directory works from any working directory (REPO here), with
    --context choosing among several."""
    parts = split_admin(apiserver, tmp_path / "hub")
    config = tmp_path / "hub" / "config"
    config.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "broken",
        "clusters": [{"name": "hub", "cluster": {"server": parts["server"], **parts["cluster"]}},
                     {"name": "nowhere", "cluster": {"server": f"https://127.0.0.1:{closed_port()}"}}],
        "users": [{"name": "admin", "user": parts["user"]}],
        "contexts": [{"name": "broken", "context": {"cluster": "nowhere", "user": "admin"}},
                     {"name": "hub", "context": {"cluster": "hub", "user": "admin"}}]}))
    ns = f"ctl-{uuid.uuid4().hex[:6]}"
    admin = await apiserver.admin_client()
    ctl = ControllerProcess(config, tmp_path / "controller.log", hub_id=f"cli-{ns}",
                            extra=("--context", "hub", "--shards", "0"))
    try:
        await admin.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                  "metadata": {"name": ns}}, field_manager="test")
        await admin.create(AP.format(ns=ns, name=""), {
            "apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPoint", "metadata": {"name": "checkout"},
            "spec": {"template": tls_gateway_template("shop.example", "shop")}}, field_manager="test")
        ctl.start()
        # kopf's watch delivered the AccessPoint and the controller's client wrote its status
        status = await wait_status(admin, AP.format(ns=ns, name="checkout"),
                                   lambda s: s.get("observedGeneration") == 1, timeout=60)
        assert status["observedGeneration"] == 1
        assert ctl.alive
    finally:
        ctl.stop()
        await admin.delete(f"/api/v1/namespaces/{ns}")
        await admin.close()
