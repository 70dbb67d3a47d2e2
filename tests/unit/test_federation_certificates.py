"""federation.certificates without I/O: issuer choice, derivation per placed cluster, annotation
validation, reading a bundle back from a Secret."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace
from typing import Any, cast

import pytest

from accesspoint.models import AccessPoint
from certs.ca import InternalCA, generate_ca
from certs.delivery import tls_secret
from federation.certificates import (
    DURATION_ANNOTATION,
    ISSUER_ANNOTATION,
    RENEW_BEFORE_ANNOTATION,
    Certificates,
    bundle_from_secret,
    store_name,
    validate_annotations,
)
from federation.controller import Controller
from federation.members import Member, OwnedCache
from placement.models import ClusterDecision, MemberCluster, PlacementDecision


def feature(issuers: dict[str, list[str]]) -> Certificates:
    ctl = SimpleNamespace(hub=None, writer=None, hub_id="hub-1")
    f = Certificates(cast(Controller, ctl))
    f.issuers = {name: {"metadata": {"name": name, "generation": 1}, "spec": {"allowedDomains": allowed}}
                 for name, allowed in issuers.items()}
    return f


def member(name: str, region: str) -> Member:
    mc = MemberCluster.model_validate({
        "metadata": {"name": name},
        "spec": {"kubeconfigSecretRef": {"name": f"{name}-kubeconfig", "namespace": "meshfed-system",
                                         "key": "kubeconfig"}, "region": region, "zone": f"{region}-1"}})
    return Member(name=name, spec=mc, hub_id="hub-1", cache=OwnedCache("hub-1"))


def accesspoint(host: str, annotations: dict[str, str] | None = None, tls: bool = True) -> AccessPoint:
    server: dict[str, Any] = {"port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": [host]}
    if tls:
        server["tls"] = {"mode": "SIMPLE"}
    return AccessPoint.model_validate({
        "metadata": {"name": "shop", "namespace": "web", "uid": "u-1", "annotations": annotations or {}},
        "spec": {"template": [{"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
                               "metadata": {"name": "gw", "namespace": "edge"},
                               "spec": {"selector": {"app": "gw"}, "servers": [server]}}]}})


def placed(*names: str) -> PlacementDecision:
    return PlacementDecision(selected=[ClusterDecision(cluster=n, reason="selected") for n in names])


MEMBERS = {"m1": member("m1", "eu"), "m2": member("m2", "us")}


def test_issuer_choice_prefers_a_specific_issuer_that_covers_every_host() -> None:
    f = feature({"any-ca": [], "corp-ca": ["*.example.com"], "other-ca": ["*.other.test"]})
    assert f._choose_issuer(["a.example.com", "b.example.com"]) == "corp-ca"
    assert f._choose_issuer(["a.example.com", "x.other.test"]) == "any-ca"  # only the catch-all covers both
    strict = feature({"corp-ca": ["*.example.com"], "other-ca": ["*.other.test"]})
    assert strict._choose_issuer(["a.nowhere.test"]) == "corp-ca"  # none covers: first by name, which refuses
    assert feature({})._choose_issuer(["a.example.com"]) is None


def test_derive_unions_hosts_of_every_placed_cluster_and_finds_gateway_namespaces() -> None:
    f = feature({"corp-ca": ["*.example.com"]})
    d = f.derive(accesspoint("shop.${region}.example.com"), placed("m1", "m2"), MEMBERS)
    assert d.certificate is not None
    spec = d.certificate.spec
    assert spec.hosts == ["shop.eu.example.com", "shop.us.example.com"]
    assert spec.issuer_ref.name == "corp-ca" and spec.access_point_ref is not None
    assert d.certificate.labels["meshfed.io/accesspoint"] == "shop"
    assert d.gateway_namespaces == {"m1": {"edge"}, "m2": {"edge"}}
    only_m1 = f.derive(accesspoint("shop.${region}.example.com"), placed("m1"), MEMBERS)
    assert only_m1.certificate is not None and only_m1.certificate.spec.hosts == ["shop.eu.example.com"]


def test_derive_wants_nothing_without_tls_issuers_or_when_opted_out() -> None:
    f = feature({"corp-ca": []})
    assert f.derive(accesspoint("a.example.com", tls=False), placed("m1"), MEMBERS).certificate is None
    assert feature({}).derive(accesspoint("a.example.com"), placed("m1"), MEMBERS).certificate is None
    opted_out = accesspoint("a.example.com", {ISSUER_ANNOTATION: "none"})
    assert f.derive(opted_out, placed("m1"), MEMBERS).certificate is None


def test_derive_takes_annotations_and_keeps_a_still_valid_issuer() -> None:
    f = feature({"a-ca": [], "corp-ca": ["*.example.com"]})
    ap = accesspoint("a.example.com", {DURATION_ANNOTATION: "90s", RENEW_BEFORE_ANNOTATION: "60s"})
    d = f.derive(ap, placed("m1"), MEMBERS)
    assert d.certificate is not None
    assert (d.certificate.spec.duration, d.certificate.spec.renew_before) == ("90s", "60s")
    assert d.certificate.spec.issuer_ref.name == "corp-ca"
    # Already issued by the catch-all: it still may sign, so it stays (no needless re-issue).
    f.certs["web/shop"] = {"metadata": {"name": "shop", "namespace": "web"},
                           "spec": {"hosts": ["a.example.com"], "issuerRef": {"name": "a-ca"},
                                    "privateKey": {"algorithm": "RSA"}}}
    kept = f.derive(accesspoint("a.example.com"), placed("m1"), MEMBERS).certificate
    assert kept is not None and kept.spec.issuer_ref.name == "a-ca"
    assert kept.spec.private_key.algorithm == "RSA"  # user edits on the Certificate survive
    explicit = f.derive(accesspoint("a.example.com", {ISSUER_ANNOTATION: "corp-ca"}), placed("m1"), MEMBERS)
    assert explicit.certificate is not None and explicit.certificate.spec.issuer_ref.name == "corp-ca"


def test_annotation_validation_names_the_field() -> None:
    bad = accesspoint("a.example.com", {DURATION_ANNOTATION: "soon"})
    assert validate_annotations(bad, [], None, PlacementDecision()) == [
        "metadata.annotations[meshfed.io/certificate-duration]: invalid duration 'soon' "
        "(expected e.g. '2160h', '90m', '1h30m')"]
    assert validate_annotations(accesspoint("a.example.com", {RENEW_BEFORE_ANNOTATION: "1h30m"}), [], None,
                                PlacementDecision()) == []


def test_bundle_round_trips_through_a_secret_without_showing_the_key() -> None:
    bundle = InternalCA(*generate_ca()).issue_sync(["a.example.com"], timedelta(days=1))
    secret = tls_secret(bundle, name=store_name("web", "shop"), namespace="meshfed-system", revision=4)
    found = bundle_from_secret(secret, "corp-ca")
    assert found is not None
    back, revision = found
    assert revision == 4 and back.serial_hex == bundle.serial_hex and back.key_pem == bundle.key_pem
    assert back.hosts == ("a.example.com",) and back.ca_pem == bundle.ca_pem
    assert "PRIVATE" not in repr(back) and "PRIVATE" not in repr(secret)
    assert store_name("web", "shop") == "mfcert.web.shop"
    unannotated = {**secret, "metadata": {"name": "x"}}
    assert bundle_from_secret(unannotated) is None


@pytest.mark.parametrize("data", [{}, {"tls.crt": "", "tls.key": ""}])
def test_bundle_from_an_incomplete_secret_is_none(data: dict[str, str]) -> None:
    secret = {"metadata": {"annotations": {"meshfed.io/certificate-revision": "1"}}, "data": data}
    assert bundle_from_secret(secret) is None
