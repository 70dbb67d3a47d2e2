"""The RBAC in deploy/ is sufficient: the real `meshfed controller` runs with nothing but it.

A hub and one member, each a real kube-apiserver with an audit log (fleet.testing.audited_apiserver).
deploy/ is applied to the hub and deploy/member/ to the member exactly as `kubectl apply -k` would
(fleet.testing.kustomize_objects). The controller authenticates to the hub with a token of the
ServiceAccount meshfed-system/meshfed-controller (TokenRequest API) and to the member with a token of
meshfed-system/meshfed-hub there; `meshfed sds` runs as meshfed-system/meshfed-sds. The scenario drives
every feature's hub and member requests: an AccessPoint applied to the member (status, finalizer,
Events, ControllerRevisions created and pruned, a rollout paused for a RolloutApproval that is then
approved), a NameService published through a DNSProvider on a real BIND (status, finalizer, TSIG
Secret), a CertificateIssuer with its CA Secret in meshfed-system issuing a certificate delivered to
the member (store Secret, Certificate status, issuer status), and the deletion of everything.

Witnesses that nothing was refused: each API server's audit log (no request of these identities was
answered 403 or denied by the authorizer), each API server's authorization_attempts_total (no attempt
that was not allowed, for any user; RBAC refusals never reach apiserver_request_total, which is checked
for 403s from handlers too), and the controller's and sds's logs (no "forbidden"). The audit log also
shows each feature's requests happened, so the test cannot pass by not exercising them; and at the end
three requests the controller must not be allowed are refused and seen by the audit log and the metric,
so the witnesses are shown to work.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from certs.ca import generate_ca
from e2e.dnsservers import BindServer, start_bind
from federation.kube import ApiError, KubeClient
from fleet import REPO, pki, register_member
from fleet.l4 import Allocator, pool_for
from fleet.testing import (
    DEPLOY,
    AuditedClusterProc,
    ControllerProcess,
    apply_objects,
    audited_apiserver,
    authorization_refusals,
    denied_requests,
    eventually,
    kustomize_objects,
    requests_with_code,
    service_account_token,
    tls_gateway_template,
    token_kubeconfig,
)

pytestmark = pytest.mark.integration

HUB_NS = "meshfed-system"
CONTROLLER_USER = f"system:serviceaccount:{HUB_NS}:meshfed-controller"
MEMBER_USER = f"system:serviceaccount:{HUB_NS}:meshfed-hub"  # deploy/member/serviceaccount.yaml
SDS_USER = f"system:serviceaccount:{HUB_NS}:meshfed-sds"
ZONE = "example.test"
NS = "shop"
AP = f"/apis/meshfed.io/v1alpha1/namespaces/{NS}/accesspoints"
CERTS = f"/apis/meshfed.io/v1alpha1/namespaces/{NS}/certificates"
NSVC = f"/apis/meshfed.io/v1alpha1/namespaces/{NS}/nameservices"
RAPS = f"/apis/meshfed.io/v1alpha1/namespaces/{NS}/rolloutapprovals"
REVISIONS = f"/apis/apps/v1/namespaces/{NS}/controllerrevisions"
HUB_SECRETS = f"/api/v1/namespaces/{HUB_NS}/secrets"
FORBIDDEN = re.compile(r"\b403\b|forbidden", re.IGNORECASE)


@pytest.fixture(scope="module")
async def servers(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[AuditedClusterProc,
                                                                                   AuditedClusterProc]]:
    root = tmp_path_factory.mktemp("rbac")
    started = await asyncio.gather(audited_apiserver(root, "hub"),
                                   audited_apiserver(root, "member-1", istio_crds=True), return_exceptions=True)
    hub, member = started
    if not isinstance(hub, AuditedClusterProc) or not isinstance(member, AuditedClusterProc):
        for s in started:
            if isinstance(s, AuditedClusterProc):
                s.stop()
        raise next(s for s in started if isinstance(s, BaseException))
    try:
        yield hub, member
    finally:
        hub.stop()
        member.stop()


@pytest.fixture(scope="module")
def bind() -> Iterator[BindServer]:
    server = start_bind([ZONE])  # MissingBinary names the Debian package (bind9) when named is absent
    try:
        yield server
    finally:
        server.close()


async def admin(cluster: AuditedClusterProc) -> KubeClient:
    return await cluster.client()


def write_kubeconfig(path: Path, config: dict[str, Any]) -> Path:
    pki.write_private(path, yaml.safe_dump(config).encode())
    return path


def accesspoint(version: str) -> dict[str, Any]:
    host = f"checkout.{ZONE}"
    template = [
        *tls_gateway_template(host, "placeholder"),
        {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "${name}-app"},
         "spec": {"hosts": [host], "gateways": ["${name}-gw"],
                  "http": [{"route": [{"destination": {"host": "app.svc.cluster.local"}}],
                            "headers": {"response": {"set": {"x-version": version}}}}]}},
    ]
    return {"apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPoint",
            "metadata": {"name": "checkout", "namespace": NS,
                         # a third revision prunes the first: ControllerRevision deletes are exercised too
                         "annotations": {"meshfed.io/revision-history-limit": "1"}},
            "spec": {"template": template}}


def start_sds(kubeconfig: Path, log: Path) -> subprocess.Popen[bytes]:
    """`meshfed sds --kubeconfig` (hub mode: Certificates and stored bundles, ACK/NACK into status)."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cli.main", "sds", "--kubeconfig", str(kubeconfig),
             "--listen", f"unix:{log.parent / 'sds.sock'}"],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def cond(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions") or [] if c["type"] == type_), {})


async def status_of(client: KubeClient, path: str) -> dict[str, Any]:
    return ((await client.get(path)) or {}).get("status") or {}


def requests(cluster: AuditedClusterProc, user: str) -> set[str]:
    """`verb group/resource[/subresource]` of every request `user` made (audit log)."""
    out = set()
    for e in cluster.audit_events(user):
        ref = e.get("objectRef") or {}
        if ref:
            sub = f"/{ref['subresource']}" if ref.get("subresource") else ""
            out.add(f"{e['verb']} {ref.get('apiGroup') or 'core'}/{ref['resource']}{sub}")
    return out


async def test_controller_runs_every_feature_with_only_the_rbac_in_deploy(
    servers: tuple[AuditedClusterProc, AuditedClusterProc], bind: BindServer, tmp_path: Path
) -> None:
    hub_proc, member_proc = servers
    hub, member = await admin(hub_proc), await admin(member_proc)
    ctl: ControllerProcess | None = None
    sds: subprocess.Popen[bytes] | None = None
    vip_client = await member_proc.client()
    vips = asyncio.create_task(Allocator(vip_client, pool_for(1)).run())  # the fleet's stand-in LB controller
    try:
        # ---- install as documented: deploy/ on the hub, deploy/member/ on the member ----
        await apply_objects(hub, kustomize_objects(DEPLOY))
        await apply_objects(member, kustomize_objects(DEPLOY / "member"))

        # ---- identities: ServiceAccount tokens (TokenRequest), never the admin certificate ----
        hub_token = await service_account_token(hub, HUB_NS, "meshfed-controller")
        hub_kubeconfig = write_kubeconfig(tmp_path / "controller.kubeconfig",
                                          token_kubeconfig(hub_proc, "meshfed-controller", hub_token))
        sds_kubeconfig = write_kubeconfig(tmp_path / "sds.kubeconfig", token_kubeconfig(
            hub_proc, "meshfed-sds", await service_account_token(hub, HUB_NS, "meshfed-sds")))
        member_token = await service_account_token(member, HUB_NS, "meshfed-hub")
        as_controller = await KubeClient.from_kubeconfig_file(str(hub_kubeconfig), "hub-as-controller")
        try:
            review = await as_controller.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                                                 body={"apiVersion": "authentication.k8s.io/v1",
                                                       "kind": "SelfSubjectReview"})
        finally:
            await as_controller.close()
        assert review["status"]["userInfo"]["username"] == CONTROLLER_USER
        assert "system:masters" not in review["status"]["userInfo"].get("groups", [])

        # ---- what an administrator sets up on the hub ----
        await register_member(hub, "member-1", yaml.safe_dump(token_kubeconfig(member_proc, "meshfed-hub",
                                                                                member_token)),
                              "region-a", "region-a-1", {"env": "test"})
        ca_pem, ca_key = generate_ca("meshfed rbac test CA")
        await hub.create(HUB_SECRETS, {
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": "corp-ca", "namespace": HUB_NS},
            "data": {"tls.crt": base64.b64encode(ca_pem).decode(), "tls.key": base64.b64encode(ca_key).decode()}},
            field_manager="test")
        await hub.create("/apis/meshfed.io/v1alpha1/certificateissuers", {
            "apiVersion": "meshfed.io/v1alpha1", "kind": "CertificateIssuer", "metadata": {"name": "corp-ca"},
            "spec": {"ca": {"secretRef": {"name": "corp-ca", "namespace": HUB_NS}}, "allowedDomains": [f"*.{ZONE}"]}},
            field_manager="test")
        await hub.create(HUB_SECRETS, {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "bind-tsig", "namespace": HUB_NS},
            "stringData": {"secret": bind.key_secret}}, field_manager="test")
        await hub.create("/apis/meshfed.io/v1alpha1/dnsproviders", {
            "apiVersion": "meshfed.io/v1alpha1", "kind": "DNSProvider", "metadata": {"name": "bind"},
            "spec": {"type": "rfc2136", "zone": ZONE,
                     "rfc2136": {"server": bind.host, "port": bind.port, "timeoutSeconds": 2,
                                 "tsig": {"keyName": bind.key_name.rstrip("."), "algorithm": bind.key_algorithm,
                                          "secretRef": {"name": "bind-tsig", "key": "secret"}}}}},
            field_manager="test")
        await hub.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
                         field_manager="test")

        # ---- the controller and `meshfed sds`, each with its ServiceAccount token only ----
        ctl = ControllerProcess(hub_kubeconfig, tmp_path / "controller.log")
        ctl.start()
        sds = start_sds(sds_kubeconfig, tmp_path / "sds.log")

        def alive() -> None:
            assert ctl is not None and ctl.proc is not None and ctl.proc.poll() is None, ctl.log_tail() if ctl else ""

        async def member_ready() -> bool:
            alive()
            st = await status_of(hub, "/apis/meshfed.io/v1alpha1/memberclusters/member-1")
            return cond(st, "Ready").get("status") == "True"

        await eventually(member_ready, 60, message="MemberCluster member-1 should be Ready")

        # ---- an AccessPoint: applied to the member, status, finalizer, Events, first revision ----
        await hub.create(AP, accesspoint("v1"), field_manager="test")
        await hub.create(NSVC, {
            "apiVersion": "meshfed.io/v1alpha1", "kind": "NameService",
            "metadata": {"name": "checkout", "namespace": NS},
            "spec": {"fqdn": f"checkout.{ZONE}", "ttl": 30, "recordType": "A", "providerRef": {"name": "bind"},
                     "target": {"accessPointRef": {"name": "checkout"}}}}, field_manager="test")

        async def ap_ready() -> dict[str, Any]:
            alive()
            obj = await hub.get(f"{AP}/checkout") or {}
            st = obj.get("status") or {}
            ok = (st.get("summary") or {}).get("phase") == "Ready" and (st.get("rollout") or {}).get("phase") == \
                "Succeeded" and st.get("fqdn") == f"checkout.{ZONE}" and bool(st.get("certificate"))
            assert ok, {k: st.get(k) for k in ("summary", "rollout", "fqdn", "certificate", "conditions")}
            return obj

        obj = await eventually(ap_ready, 90, message="AccessPoint should be Ready with FQDN and certificate")
        assert "meshfed.io/cleanup" in obj["metadata"]["finalizers"]
        v1 = obj["status"]["revision"]
        gw = await member.get(f"/apis/networking.istio.io/v1/namespaces/{NS}/gateways/checkout-gw") or {}
        assert gw["metadata"]["labels"]["meshfed.io/hub"], gw
        credential = gw["spec"]["servers"][0]["tls"]["credentialName"]
        tls = await member.get(f"/api/v1/namespaces/{NS}/secrets/{credential}") or {}
        assert tls.get("type") == "kubernetes.io/tls" and base64.b64decode(tls["data"]["ca.crt"]) == ca_pem

        async def certificate_delivered() -> dict[str, Any]:
            st = await status_of(hub, f"{CERTS}/checkout")
            assert cond(st, "Ready").get("status") == "True" and \
                [c.get("revision") for c in st.get("clusters") or []] == [1], st
            return st

        await eventually(certificate_delivered, 60, message="Certificate should be issued and delivered")
        assert await hub.get(f"{HUB_SECRETS}/mfcert.{NS}.checkout"), "the issued bundle is kept on the hub"
        issuer = await status_of(hub, "/apis/meshfed.io/v1alpha1/certificateissuers/corp-ca")
        assert issuer.get("ready") == "True", issuer

        async def published() -> bool:
            st = await status_of(hub, f"{NSVC}/checkout")
            dp = await status_of(hub, "/apis/meshfed.io/v1alpha1/dnsproviders/bind")
            return cond(st, "Ready").get("status") == "True" and dp.get("ready") == "True"

        await eventually(published, 60, message="NameService should be published, DNSProvider Ready")
        nsvc = await hub.get(f"{NSVC}/checkout") or {}
        assert "meshfed.io/cleanup" in nsvc["metadata"]["finalizers"]

        async def has_events() -> set[str]:
            items = (await hub.request("GET", f"/api/v1/namespaces/{NS}/events"))["items"]
            reasons = {e["reason"] for e in items if e["source"].get("component") == "meshfed-controller"}
            assert {"ClusterApplied", "Issued", "Published"} <= reasons, reasons
            return reasons

        await eventually(has_events, 30, message="the controller's Events should be posted")
        revs, _ = await hub.list(REVISIONS)
        assert len(revs) == 1 and revs[0]["metadata"]["name"] == f"checkout-{v1}"

        # ---- a change: a new revision pauses after the canary for a RolloutApproval; approve it ----
        async def set_version(version: str) -> None:
            await hub.merge_patch(f"{AP}/checkout", {"spec": {"template": accesspoint(version)["spec"]["template"]}})

        async def approval(revision: str) -> dict[str, Any]:
            alive()
            items, _ = await hub.list(RAPS)
            found = [a for a in items if a["spec"]["revision"] == revision
                     and (a.get("status") or {}).get("phase") == "Pending"]
            assert found, items
            return found[0]

        async def new_revision(old: str) -> str:
            alive()
            rev = str((await status_of(hub, f"{AP}/checkout")).get("revision") or "")
            assert rev and rev != old, rev
            return rev

        await set_version("v2")
        v2 = await eventually(lambda: new_revision(v1), 30, message="a second revision")
        rap = await eventually(lambda: approval(v2), 60, message="a pending RolloutApproval for the new revision")
        await hub.merge_patch(f"{RAPS}/{rap['metadata']['name']}",
                              {"spec": {"decision": "Approved", "approver": "meshfed-admin", "reason": "rbac test"}})

        async def rolled_out() -> bool:
            alive()
            st = await status_of(hub, f"{AP}/checkout")
            ro = st.get("rollout") or {}
            phase = (await status_of(hub, f"{RAPS}/{rap['metadata']['name']}")).get("phase")
            return ro.get("phase") == "Succeeded" and ro.get("stable") == v2 and phase == "Approved"

        await eventually(rolled_out, 60, message="the approved rollout should complete")

        # a third revision with history limit 1: the first revision's ControllerRevision is pruned
        await set_version("v3")
        v3 = await eventually(lambda: new_revision(v2), 30, message="a third revision")

        async def pruned() -> set[str]:
            names = {r["metadata"]["name"] for r in (await hub.list(REVISIONS))[0]}
            assert names == {f"checkout-{v2}", f"checkout-{v3}"}, names
            return names

        await eventually(pruned, 30, message="the oldest ControllerRevision should be deleted")
        await eventually(lambda: approval(v3), 60, message="a pending RolloutApproval for the third revision")

        # `meshfed sds` has listed Certificates and the bundles it serves
        async def sds_synced() -> set[str]:
            seen = requests(hub_proc, SDS_USER)
            assert {"list meshfed.io/certificates", "watch meshfed.io/certificates", "list core/secrets",
                    "watch core/secrets"} <= seen, seen
            return seen

        await eventually(sds_synced, 30, message="meshfed sds should list+watch Certificates and bundles")
        assert sds.poll() is None, (tmp_path / "sds.log").read_text()[-3000:]

        # ---- deletion: NameService (records removed, finalizer dropped), then the AccessPoint ----
        await hub.delete(f"{NSVC}/checkout")
        await eventually(lambda: _gone(hub, f"{NSVC}/checkout"), 60, message="NameService should be finalized")
        await hub.delete(f"{AP}/checkout")
        await eventually(lambda: _gone(hub, f"{AP}/checkout"), 60, message="AccessPoint should be finalized")

        async def cleaned() -> bool:
            left = [*(await member.list(f"/api/v1/namespaces/{NS}/services",
                                        label_selector="meshfed.io/hub"))[0],
                    *(await member.list(f"/api/v1/namespaces/{NS}/secrets", label_selector="meshfed.io/hub"))[0]]
            return not left and await hub.get(f"{CERTS}/checkout") is None and \
                await hub.get(f"{HUB_SECRETS}/mfcert.{NS}.checkout") is None

        await eventually(cleaned, 60, message="member objects, the Certificate and its stored bundle should go")
        alive()

        # ---- the witnesses ----
        await asyncio.sleep(1)  # the audit log is written when a request completes
        hub_requests, member_requests = requests(hub_proc, CONTROLLER_USER), requests(member_proc, MEMBER_USER)
        assert denied_requests(hub_proc.audit_events(CONTROLLER_USER)) == []
        assert denied_requests(hub_proc.audit_events(SDS_USER)) == []
        assert denied_requests(member_proc.audit_events(MEMBER_USER)) == []
        assert await authorization_refusals(hub) == {}
        assert await authorization_refusals(member) == {}
        assert await requests_with_code(hub, "403") == {}  # e.g. admission (the approval policy) refusing
        assert await requests_with_code(member, "403") == {}
        log = ctl.log_path.read_text(errors="replace")
        assert not FORBIDDEN.search(log), FORBIDDEN.findall(log)
        sds_log = (tmp_path / "sds.log").read_text(errors="replace")
        assert not FORBIDDEN.search(sds_log), sds_log[-3000:]

        # ... and every feature's requests did happen with those rights (none was skipped).
        expected_hub = {
            # foundation
            "watch meshfed.io/memberclusters", "patch meshfed.io/memberclusters/status", "get core/secrets",
            "watch meshfed.io/accesspoints", "patch meshfed.io/accesspoints", "patch meshfed.io/accesspoints/status",
            "create core/events", "watch meshfed.io/placementpolicies",
            # rollouts
            "list apps/controllerrevisions", "create apps/controllerrevisions", "delete apps/controllerrevisions",
            "create meshfed.io/rolloutapprovals", "watch meshfed.io/rolloutapprovals",
            "patch meshfed.io/rolloutapprovals/status",
            # dns
            "watch meshfed.io/nameservices", "patch meshfed.io/nameservices", "patch meshfed.io/nameservices/status",
            "watch meshfed.io/dnsproviders", "patch meshfed.io/dnsproviders/status",
            # certificates
            "create meshfed.io/certificates", "patch meshfed.io/certificates/status", "delete meshfed.io/certificates",
            "patch meshfed.io/certificateissuers/status", "watch core/secrets", "patch core/secrets",
            "delete core/secrets",
        }
        assert expected_hub <= hub_requests, sorted(expected_hub - hub_requests)
        expected_member = {
            "list core/services", "watch core/services", "create core/services", "delete core/services",
            "list core/secrets", "watch core/secrets", "create core/secrets", "delete core/secrets",
            "create networking.istio.io/gateways", "watch networking.istio.io/gateways",
            "create networking.istio.io/virtualservices", "patch networking.istio.io/virtualservices",
            "create core/namespaces",
        }
        assert expected_member <= member_requests, sorted(expected_member - member_requests)

        # The witnesses see a refusal: the controller's identity may not list Secrets cluster-wide,
        # create AccessPoints, or read Secrets in an application namespace.
        probe = await KubeClient.from_kubeconfig_file(str(hub_kubeconfig), "hub-as-controller", attempts=1)
        try:
            for method, path in (("GET", "/api/v1/secrets"), ("POST", AP), ("GET", f"/api/v1/namespaces/{NS}/secrets")):
                with pytest.raises(ApiError) as refused:
                    await probe.request(method, path, body=accesspoint("v4") if method == "POST" else None)
                assert refused.value.status == 403, refused.value
        finally:
            await probe.close()
        await asyncio.sleep(1)
        assert sorted(denied_requests(hub_proc.audit_events(CONTROLLER_USER))) == [
            "create meshfed.io/accesspoints shop -> 403", "list core/secrets -> 403", "list core/secrets shop -> 403"]
        assert await authorization_refusals(hub) == {"no-opinion": 3}  # no RBAC rule matched
    finally:
        vips.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await vips
        if sds is not None and sds.poll() is None:
            os.killpg(sds.pid, signal.SIGTERM)
            try:
                sds.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(sds.pid, signal.SIGKILL)
                sds.wait()
        if ctl is not None:
            ctl.stop()
        for c in (hub, member, vip_client):
            await c.close()


async def _gone(client: KubeClient, path: str) -> bool:
    return await client.get(path) is None
