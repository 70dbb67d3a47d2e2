"""CertificateIssuer status against real components: a real API server (the hub: the account key Secret
is created there, the status written there) and a real Pebble (the account registered there).

An ACME issuer is Ready only once the ACME server knows its account (status.acmeAccountURI); a dead
directory or a refused external account binding is not Ready and names the error; a missing account key
is generated and the Secret created holding it; a Secret someone else made without the key is left alone.
Also: the API server refuses key sizes issuance cannot make, and TenancyPolicy kinds that are no
template kind, naming the field."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from certs.acme_issuer import AcmeIssuer, Http01Responder
from certs.issuers import load_key
from e2e.certservers import MissingComponent, Pebble, free_port
from federation import dns as dns_feature
from federation.certificates import ISSUERS, SECRETS, Certificates
from federation.controller import Controller
from federation.kube import ApiError, KubeClient
from tests.integration.conftest import ApiServer

pytestmark = pytest.mark.integration

NS = "meshfed-system"
EAB_KID, EAB_HMAC = "kid-1", base64.urlsafe_b64encode(b"h" * 32).decode().rstrip("=")


@pytest.fixture(scope="module")
def pebble() -> Iterator[Pebble]:
    try:
        server = Pebble().start()
    except MissingComponent as exc:
        pytest.skip(str(exc))
    yield server
    server.stop()


@pytest.fixture
async def hub(apiserver: ApiServer) -> AsyncIterator[KubeClient]:
    client = await apiserver.admin_client()
    try:
        await client.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                    "metadata": {"name": NS}}, field_manager="test")
    except ApiError as err:
        assert err.status == 409
    yield client
    await client.close()


@pytest.fixture
async def feature(hub: KubeClient, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Certificates]:
    # A DNSProvider named by solver.dns01 exists (registration never writes a challenge record).
    monkeypatch.setattr(dns_feature, "feature_of", lambda _ctl: SimpleNamespace(providers={"dns": {}}))
    f = Certificates(Controller(hub, "test-hub", workers=1))
    yield f
    await f.stop()


def issuer(name: str, server: str, secret: str, ca_bundle: str = "", **acme: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"server": server, "accountKeySecretRef": {"name": secret},
                            "solver": {"dns01": {"providerRef": "dns"}}, **acme}
    if ca_bundle:
        spec["caBundle"] = ca_bundle
    return {"apiVersion": "meshfed.io/v1alpha1", "kind": "CertificateIssuer", "metadata": {"name": name},
            "spec": {"acme": spec}}


async def reconcile(feature: Certificates, hub: KubeClient, body: dict[str, Any]) -> dict[str, Any]:
    """Create the issuer on the hub, let the feature build it once, return the status it wrote."""
    created = await hub.create(ISSUERS, body, field_manager="test")
    feature.issuers[body["metadata"]["name"]] = created
    await feature.reconcile_issuer(body["metadata"]["name"])
    got = await hub.get(f"{ISSUERS}/{body['metadata']['name']}") or {}
    return dict(got.get("status") or {})


def ready(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status.get("conditions", []) if c["type"] == "Ready")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def test_missing_account_key_is_generated_and_the_account_registered(
        pebble: Pebble, hub: KubeClient, feature: Certificates) -> None:
    name, secret = unique("pebble"), unique("acme-account")
    assert await hub.get(f"{SECRETS.format(ns=NS)}/{secret}") is None
    status = await reconcile(feature, hub, issuer(name, pebble.directory_url, secret, pebble.ca_bundle_pem))
    assert ready(status)["status"] == "True", status
    uri = status.get("acmeAccountURI") or ""
    assert uri.startswith(f"https://127.0.0.1:{pebble.acme_port}/") and "my-account" in uri, status
    # The Secret now exists, meshfed's, holding a usable key: the account Pebble knows is that key's.
    stored = await hub.get(f"{SECRETS.format(ns=NS)}/{secret}") or {}
    assert stored["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "meshfed"
    key_pem = base64.b64decode(stored["data"]["tls.key"])
    load_key(key_pem)
    again = AcmeIssuer(pebble.directory_url, key_pem, Http01Responder(), ca_bundle_pem=pebble.ca_bundle_pem.encode())
    assert await again.register() == uri
    # A second build (e.g. after a restart) reuses the stored key: same account, the Secret untouched.
    feature.issuer_cache.clear()
    feature.issuers[name] = await hub.get(f"{ISSUERS}/{name}") or {}
    await feature.reconcile_issuer(name)
    after = await hub.get(f"{SECRETS.format(ns=NS)}/{secret}") or {}
    assert after["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]
    assert ((await hub.get(f"{ISSUERS}/{name}")) or {})["status"]["acmeAccountURI"] == uri


async def test_a_dead_directory_is_not_ready_and_names_the_error(hub: KubeClient, feature: Certificates) -> None:
    name, secret = unique("dead"), unique("acme-account")
    dead = f"https://127.0.0.1:{free_port()}/dir"
    status = await reconcile(feature, hub, issuer(name, dead, secret))
    cond = ready(status)
    assert (cond["status"], cond["reason"]) == ("False", "AcmeUnreachable"), status
    assert dead in cond["message"] and "acmeAccountURI" not in status
    assert status["ready"] == "False"


async def test_a_refused_external_account_binding_is_not_ready(hub: KubeClient, feature: Certificates) -> None:
    try:
        strict = await asyncio.to_thread(Pebble(eab_keys={EAB_KID: EAB_HMAC}).start)
    except MissingComponent as exc:
        pytest.skip(str(exc))
    try:
        eab_secret = unique("eab")
        await hub.create(SECRETS.format(ns=NS), {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": eab_secret, "namespace": NS},
            "data": {"secret": base64.b64encode(base64.urlsafe_b64encode(b"w" * 32)).decode()}},
            field_manager="test")
        wrong = {"externalAccountBinding": {"keyID": EAB_KID, "keySecretRef": {"name": eab_secret}}}
        status = await reconcile(feature, hub, issuer(unique("eab-wrong"), strict.directory_url, unique("acct"),
                                                      strict.ca_bundle_pem, **wrong))
        cond = ready(status)
        assert (cond["status"], cond["reason"]) == ("False", "AcmeRejected"), status
        assert "acmeAccountURI" not in status
        # Without any binding, the server that requires one is named as the reason.
        status = await reconcile(feature, hub, issuer(unique("eab-none"), strict.directory_url, unique("acct"),
                                                      strict.ca_bundle_pem))
        assert ready(status)["reason"] == "ExternalAccountRequired", status
        # The right HMAC key: Ready.
        good_secret = unique("eab")
        await hub.create(SECRETS.format(ns=NS), {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": good_secret, "namespace": NS},
            "data": {"secret": base64.b64encode(EAB_HMAC.encode()).decode()}}, field_manager="test")
        right = {"externalAccountBinding": {"keyID": EAB_KID, "keySecretRef": {"name": good_secret}}}
        status = await reconcile(feature, hub, issuer(unique("eab-right"), strict.directory_url, unique("acct"),
                                                      strict.ca_bundle_pem, **right))
        assert ready(status)["status"] == "True" and status.get("acmeAccountURI"), status
    finally:
        await asyncio.to_thread(strict.stop)


async def test_a_secret_without_the_key_is_not_touched(
        pebble: Pebble, hub: KubeClient, feature: Certificates) -> None:
    secret = unique("someone-elses")
    made = await hub.create(SECRETS.format(ns=NS), {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret, "namespace": NS},
        "data": {"other": base64.b64encode(b"x").decode()}}, field_manager="test")
    status = await reconcile(feature, hub, issuer(unique("nokey"), pebble.directory_url, secret,
                                                  pebble.ca_bundle_pem))
    cond = ready(status)
    assert (cond["status"], cond["reason"]) == ("False", "AccountKeyMissing") and "tls.key" in cond["message"]
    after = await hub.get(f"{SECRETS.format(ns=NS)}/{secret}") or {}
    assert after["metadata"]["resourceVersion"] == made["metadata"]["resourceVersion"]


@pytest.mark.parametrize(("algorithm", "size"), [("ECDSA", 521), ("RSA", 1024), ("ECDSA", 2048), ("RSA", 8192)])
async def test_the_api_server_refuses_key_sizes_issuance_cannot_make(
        hub: KubeClient, algorithm: str, size: int) -> None:
    body = {"apiVersion": "meshfed.io/v1alpha1", "kind": "Certificate",
            "metadata": {"name": unique("k"), "namespace": "default"},
            "spec": {"hosts": ["a.example.com"], "issuerRef": {"name": "corp"},
                     "privateKey": {"algorithm": algorithm, "size": size}}}
    with pytest.raises(ApiError) as err:
        await hub.create("/apis/meshfed.io/v1alpha1/namespaces/default/certificates", body, field_manager="test")
    assert err.value.status == 422 and "spec.privateKey.size" in err.value.message, err.value.message
    ok = {**body, "metadata": {"name": unique("k"), "namespace": "default"},
          "spec": {**body["spec"], "privateKey": {"algorithm": algorithm,
                                                  "size": 384 if algorithm == "ECDSA" else 3072}}}
    await hub.create("/apis/meshfed.io/v1alpha1/namespaces/default/certificates", ok, field_manager="test")


async def test_the_api_server_refuses_a_kind_that_is_no_template_kind(hub: KubeClient) -> None:
    body = {"apiVersion": "meshfed.io/v1alpha1", "kind": "TenancyPolicy", "metadata": {"name": unique("tp")},
            "spec": {"namespaces": ["pay"], "targetNamespaces": [{"namespace": "edge", "kinds": ["Gatway"]}]}}
    with pytest.raises(ApiError) as err:
        await hub.create("/apis/meshfed.io/v1alpha1/tenancypolicies", body, field_manager="test")
    assert err.value.status == 422 and "spec.targetNamespaces[0].kinds[0]" in err.value.message, err.value.message


async def test_a_certificate_made_by_hand_without_its_accesspoint_says_what_it_needs(
        hub: KubeClient, feature: Certificates) -> None:
    """No AccessPoint of its name: Issued/Ready False, reason AccessPointMissing naming what to create,
    one Warning Event, nothing issued (no serial); a second reconcile writes nothing new."""
    name = unique("byhand")
    path = "/apis/meshfed.io/v1alpha1/namespaces/default/certificates"
    body = await hub.create(path, {"apiVersion": "meshfed.io/v1alpha1", "kind": "Certificate",
                                   "metadata": {"name": name, "namespace": "default"},
                                   "spec": {"hosts": ["byhand.example.com"], "issuerRef": {"name": "corp"}}},
                            field_manager="test")
    key = f"default/{name}"
    feature.certs[key] = body
    await feature.reconcile_certificate(key)
    got = await hub.get(f"{path}/{name}") or {}
    status = got.get("status") or {}
    conds = {c["type"]: c for c in status.get("conditions", [])}
    for t in ("Issued", "Ready"):
        assert (conds[t]["status"], conds[t]["reason"]) == ("False", "AccessPointMissing"), status
    assert f"no AccessPoint default/{name}" in conds["Ready"]["message"] and "serial" not in status
    async def events() -> list[dict[str, Any]]:
        items, _ = await hub.list("/api/v1/namespaces/default/events", field_selector=f"involvedObject.name={name}")
        return items

    assert feature.writer._events is not None
    await asyncio.wait_for(feature.writer._events.join(), 20)  # Events go out through the writer's queue
    assert [(e["type"], e["reason"]) for e in await events()] == [("Warning", "AccessPointMissing")]
    feature.certs[key] = got
    await feature.reconcile_certificate(key)
    again = await hub.get(f"{path}/{name}") or {}
    assert again["metadata"]["resourceVersion"] == got["metadata"]["resourceVersion"]
    assert feature.writer._events is not None
    await asyncio.wait_for(feature.writer._events.join(), 20)  # anything queued has been sent
    assert len(await events()) == 1


async def test_http01_is_refused_by_the_api_server_and_an_old_object_is_not_ready(
        hub: KubeClient, feature: Certificates) -> None:
    """HTTP-01 is not offered: the API server refuses it naming the field; an issuer stored before
    (here: read as the controller would) is Ready=False, Http01Unsupported, pointing at dns01."""
    body = issuer(unique("http"), "https://acme.example/dir", unique("acct"))
    body["spec"]["acme"]["solver"] = {"http01": {"port": 8089}}
    with pytest.raises(ApiError) as err:
        await hub.create(ISSUERS, body, field_manager="test")
    assert err.value.status == 422 and "spec.acme.solver.http01" in err.value.message, err.value.message
    assert "dns01" in err.value.message
    from certs.models import CertificateIssuer

    built = await feature._build(CertificateIssuer.model_validate({**body, "metadata": {
        "name": body["metadata"]["name"], "generation": 1}}), body)
    assert getattr(built, "reason", None) == "Http01Unsupported" and "dns01" in getattr(built, "message", "")
