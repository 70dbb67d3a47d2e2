"""certs.delivery: the member TLS Secret, Gateway TLS hosts, credentialName on covered servers."""

from __future__ import annotations

import base64
import copy
from datetime import timedelta
from typing import Any

import pytest

from certs.ca import InternalCA, generate_ca
from certs.delivery import (
    REVISION_ANNOTATION,
    SERIAL_ANNOTATION,
    delivered_revision,
    gateway_tls_hosts,
    set_credential_name,
    tls_secret,
)
from certs.issuers import CertBundle


@pytest.fixture(scope="module")
def bundle() -> CertBundle:
    return InternalCA(*generate_ca()).issue_sync(
        ["shop.example.com", "*.api.example.com"], timedelta(days=10)
    )


def test_tls_secret(bundle: CertBundle) -> None:
    s = tls_secret(
        bundle,
        name="checkout-tls",
        namespace="istio-system",
        revision=3,
        labels={"meshfed.io/accesspoint": "checkout"},
        certificate="payments.checkout",
    )
    assert s["type"] == "kubernetes.io/tls"
    assert s["apiVersion"] == "v1" and s["kind"] == "Secret"
    assert s["metadata"]["name"] == "checkout-tls" and s["metadata"]["namespace"] == "istio-system"
    assert s["metadata"]["labels"] == {
        "meshfed.io/accesspoint": "checkout",
        "meshfed.io/certificate": "payments.checkout",
    }
    assert s["metadata"]["annotations"] == {REVISION_ANNOTATION: "3", SERIAL_ANNOTATION: bundle.serial_hex}
    data = {k: base64.b64decode(v) for k, v in s["data"].items()}
    assert data == {"tls.crt": bundle.cert_pem, "tls.key": bundle.key_pem, "ca.crt": bundle.ca_pem}
    assert delivered_revision(s) == 3


def test_secret_repr_redacts_data(bundle: CertBundle) -> None:
    s = tls_secret(bundle, name="x-tls", namespace="gw", revision=1)
    for text in (repr(s), str(s), f"{s}", f"{s!r}", repr([s]), repr({"s": s})):
        assert s["data"]["tls.key"] not in text
        assert "<redacted>" in text
    assert isinstance(s, dict)


def test_ca_crt_falls_back_to_top_of_chain(bundle: CertBundle) -> None:
    no_ca = CertBundle(bundle.cert_pem + bundle.ca_pem, bundle.key_pem, b"", bundle.hosts)
    s = tls_secret(no_ca, name="x", namespace="y", revision=1)
    assert base64.b64decode(s["data"]["ca.crt"]).strip() == bundle.ca_pem.strip()


@pytest.mark.parametrize(
    ("secret", "revision"),
    [
        (None, None),
        ({}, None),
        ({"metadata": {}}, None),
        ({"metadata": {"annotations": {}}}, None),
        ({"metadata": {"annotations": {REVISION_ANNOTATION: "x"}}}, None),
        ({"metadata": {"annotations": {REVISION_ANNOTATION: "7"}}}, 7),
    ],
)
def test_delivered_revision(secret: dict[str, Any] | None, revision: int | None) -> None:
    assert delivered_revision(secret) == revision


def gateway(servers: list[dict[str, Any]], api: str = "networking.istio.io/v1") -> dict[str, Any]:
    return {
        "apiVersion": api,
        "kind": "Gateway",
        "metadata": {"name": "gw"},
        "spec": {"selector": {"istio": "ingressgateway"}, "servers": servers},
    }


HTTPS = {"port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "tls": {"mode": "SIMPLE"}}
HTTP = {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["plain.example.com"]}


def test_gateway_tls_hosts() -> None:
    manifests = [
        gateway([{**HTTPS, "hosts": ["payments/shop.example.com", "Shop.example.com"]}, HTTP]),
        gateway(
            [
                {**HTTPS, "hosts": ["*.api.example.com", "*"]},
                {**HTTPS, "tls": {"mode": "PASSTHROUGH"}, "hosts": ["pass.example.com"]},
                {**HTTPS, "tls": {"mode": "ISTIO_MUTUAL"}, "hosts": ["mesh.example.com"]},
                {**HTTPS, "tls": {"mode": "MUTUAL"}, "hosts": ["mtls.example.com"]},
            ],
            api="networking.istio.io/v1beta1",
        ),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc"}, "spec": {}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "spec": {"servers": [HTTPS]}},
    ]
    assert gateway_tls_hosts(manifests) == ["*.api.example.com", "mtls.example.com", "shop.example.com"]


def test_set_credential_name_only_on_covered_tls_servers() -> None:
    manifests = [
        gateway(
            [
                {**HTTPS, "hosts": ["payments/shop.example.com"]},  # covered
                {
                    **HTTPS,
                    "hosts": ["x.api.example.com", "shop.example.com"],
                    "tls": {"mode": "MUTUAL"},
                },  # covered
                {**HTTPS, "hosts": ["shop.example.com", "other.example.com"]},  # partly covered: untouched
                {**HTTPS, "hosts": ["*"]},  # '*' cannot be covered
                {**HTTPS, "hosts": ["shop.example.com"], "tls": {"mode": "PASSTHROUGH"}},
                HTTP,
            ]
        ),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc"}, "spec": {"ports": []}},
    ]
    before = copy.deepcopy(manifests)
    out = set_credential_name(manifests, ["shop.example.com", "*.api.example.com"], "checkout-tls")
    assert manifests == before  # inputs are not mutated
    servers = out[0]["spec"]["servers"]
    assert [s.get("tls", {}).get("credentialName") for s in servers] == [
        "checkout-tls",
        "checkout-tls",
        None,
        None,
        None,
        None,
    ]
    assert out[1] == manifests[1]
    # idempotent
    assert set_credential_name(out, ["shop.example.com", "*.api.example.com"], "checkout-tls") == out
