"""certs.models (CRDs are structural, validation) and key redaction in every key-holding type."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from certs.ca import InternalCA, generate_ca
from certs.issuers import CertBundle, IssuanceError, load_key, new_private_key
from certs.models import Certificate, CertificateIssuer
from federation.crdgen import RESOURCES, crd_manifest


def _walk(node: Any, path: str, errors: list[str]) -> None:
    if not isinstance(node, dict):
        return
    for bad in ("$ref", "anyOf", "oneOf", "allOf", "const", "title", "default"):
        if bad in node and not (bad in ("anyOf", "oneOf") and all("type" not in o for o in node[bad])):
            errors.append(f"{path}: {bad}")
    if not (
        node.get("type")
        or node.get("x-kubernetes-int-or-string")
        or node.get("x-kubernetes-preserve-unknown-fields")
    ):
        errors.append(f"{path}: no type")
    for k, v in (node.get("properties") or {}).items():
        _walk(v, f"{path}.{k}", errors)
    if isinstance(node.get("items"), dict):
        _walk(node["items"], f"{path}[]", errors)
    if isinstance(node.get("additionalProperties"), dict):
        _walk(node["additionalProperties"], f"{path}{{}}", errors)


@pytest.mark.parametrize("model", [CertificateIssuer, Certificate])
def test_crd_is_structural(model: Any) -> None:
    assert model in RESOURCES
    crd = crd_manifest(model)
    version = crd["spec"]["versions"][0]
    errors: list[str] = []
    _walk(version["schema"]["openAPIV3Schema"], "", errors)
    assert errors == []
    assert version["subresources"] == {"status": {}}
    cols = [c["name"] for c in version["additionalPrinterColumns"]]
    assert "Ready" in cols and "Age" in cols


def test_certificate_columns_and_scope() -> None:
    crd = crd_manifest(Certificate)
    assert crd["spec"]["scope"] == "Namespaced"
    cols = {c["name"]: c["jsonPath"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert cols["Cert"] == ".status.summary"
    assert crd_manifest(CertificateIssuer)["spec"]["scope"] == "Cluster"
    rules = crd_manifest(CertificateIssuer)["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
        "x-kubernetes-validations"
    ]
    assert any("spec.ca" in r["message"] for r in rules)


def test_certificate_model_validation() -> None:
    cert = Certificate.model_validate(
        {
            "metadata": {"name": "checkout", "namespace": "payments"},
            "spec": {
                "hosts": ["shop.example.com", "*.api.example.com"],
                "issuerRef": {"name": "corp"},
                "renewBefore": "720h",
            },
        }
    )
    assert cert.secret_name == "checkout-tls"
    assert cert.spec.duration == "2160h"
    assert cert.spec.private_key.rotation_policy == "Always"
    assert cert.spec.private_key.algorithm == "ECDSA"
    bads: list[dict[str, Any]] = [
        {"hosts": []},
        {"hosts": ["Bad_Host"]},
        {"hosts": ["a.b"], "duration": "90d"},
    ]
    for bad in bads:
        with pytest.raises(ValidationError):
            Certificate.model_validate(
                {"metadata": {"name": "x"}, "spec": {"issuerRef": {"name": "corp"}, **bad}}
            )


def test_issuer_model() -> None:
    ci = CertificateIssuer.model_validate(
        {
            "metadata": {"name": "letsencrypt"},
            "spec": {
                "acme": {
                    "server": "https://acme.example/dir",
                    "accountKeySecretRef": {"name": "acct"},
                    "externalAccountBinding": {
                        "keyID": "kid",
                        "keySecretRef": {"name": "eab", "key": "hmac"},
                    },
                    "solver": {"dns01": {"providerRef": "corp-dns"}},
                },
                "allowedDomains": ["*.example.com"],
            },
        }
    )
    assert ci.spec.acme is not None and ci.spec.acme.solver.dns01 is not None
    assert ci.wire()["spec"]["acme"]["externalAccountBinding"]["keyID"] == "kid"
    # Each bad field alone (the rest valid), and the error must name that field: a ValidationError
    # raised by some other field would prove nothing.
    good = {"server": "https://acme.example/dir", "accountKeySecretRef": {"name": "a"},
            "solver": {"dns01": {"providerRef": "corp-dns"}}}
    bads: list[tuple[dict[str, Any], tuple[str | int, ...]]] = [
        ({"server": "http://insecure"}, ("spec", "acme", "server")),
        ({"accountKeySecretRef": {"name": ""}}, ("spec", "acme", "accountKeySecretRef", "name")),
        ({"solver": {"dns01": {"providerRef": "corp-dns", "providerNamespace": "x"}}},
         ("spec", "acme", "solver", "dns01", "providerNamespace")),  # removed: DNSProviders are cluster-scoped
    ]
    for bad, loc in bads:
        CertificateIssuer.model_validate({"metadata": {"name": "x"}, "spec": {"acme": good}})
        with pytest.raises(ValidationError) as err:
            CertificateIssuer.model_validate({"metadata": {"name": "x"}, "spec": {"acme": {**good, **bad}}})
        assert [e["loc"] for e in err.value.errors()] == [loc], (bad, err.value.errors())


@pytest.mark.parametrize(("algorithm", "size", "ok"), [
    ("ECDSA", None, True), ("ECDSA", 256, True), ("ECDSA", 384, True), ("ECDSA", 521, False),
    ("ECDSA", 2048, False), ("RSA", None, True), ("RSA", 2048, True), ("RSA", 4096, True),
    ("RSA", 1024, False), ("RSA", 8192, False), ("RSA", 384, False),
])
def test_private_key_size_fits_its_algorithm(algorithm: str, size: int | None, ok: bool) -> None:
    """The model and the issuance code agree on the sizes; a size issuance cannot make is refused
    (ECDSA 521 used to become P-256 silently). The CRD carries the same rule (tests/integration)."""
    spec = {"hosts": ["a.example.com"], "issuerRef": {"name": "corp"},
            "privateKey": {"algorithm": algorithm, **({"size": size} if size else {})}}
    if ok:
        Certificate.model_validate({"metadata": {"name": "x"}, "spec": spec})
        key = new_private_key(algorithm, size)  # type: ignore[arg-type]
        assert key.key_size == (size or (256 if algorithm == "ECDSA" else 2048))
        return
    with pytest.raises(ValidationError) as err:
        Certificate.model_validate({"metadata": {"name": "x"}, "spec": spec})
    assert "privateKey.size" in str(err.value)
    with pytest.raises(ValueError, match="unsupported"):
        new_private_key(algorithm, size)  # type: ignore[arg-type]
    rules = crd_manifest(Certificate)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"]["privateKey"]["x-kubernetes-validations"]
    assert rules[0]["fieldPath"] == ".size"


# --- redaction -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca_pair() -> tuple[bytes, bytes]:
    return generate_ca()


def _key_fragments(key_pem: bytes) -> list[str]:
    body = b"".join(key_pem.splitlines()[1:-1]).decode()
    return [body[i : i + 16] for i in range(0, len(body) - 16, 16)]


def test_bundle_repr_never_shows_key(ca_pair: tuple[bytes, bytes]) -> None:
    b = InternalCA(*ca_pair).issue_sync(["a.example.com"])
    for text in (repr(b), str(b), f"{b}", repr([b]), repr({"b": b})):
        assert "PRIVATE KEY" not in text
        assert not any(f in text for f in _key_fragments(b.key_pem))
        assert "<redacted>" in text and b.serial_hex in text


def test_internal_ca_repr_never_shows_key(ca_pair: tuple[bytes, bytes]) -> None:
    ca = InternalCA(*ca_pair)
    text = repr(ca) + str(ca) + repr(vars(ca).keys())
    assert "PRIVATE KEY" not in text and "<redacted>" in text
    assert not any(f in text for f in _key_fragments(ca_pair[1]))


def test_errors_never_echo_keys(ca_pair: tuple[bytes, bytes]) -> None:
    cert, key = ca_pair
    lines = key.splitlines()
    broken = b"\n".join([lines[0], b"A" * 20 + lines[1][20:], *lines[2:]]) + b"\n"
    with pytest.raises(ValueError) as exc:
        load_key(broken)
    assert (
        "PRIVATE KEY" not in str(exc.value) and exc.value.__cause__ is None and exc.value.__suppress_context__
    )
    with pytest.raises(IssuanceError) as ierr:
        InternalCA(cert, broken)
    assert ierr.value.reason == "CASecretInvalid" and "PRIVATE KEY" not in str(ierr.value)
    other_key = generate_ca()[1]
    with pytest.raises(IssuanceError, match="does not match"):
        InternalCA(cert, other_key)
    with pytest.raises(IssuanceError) as missing:
        InternalCA.from_secret_data(None)
    assert missing.value.reason == "CASecretMissing"
    with pytest.raises(IssuanceError) as nokey:
        InternalCA.from_secret_data({"tls.crt": cert})
    assert nokey.value.reason == "CASecretInvalid"


def test_sds_logs_never_show_key(ca_pair: tuple[bytes, bytes], caplog: pytest.LogCaptureFixture) -> None:
    from certs.sds import SdsServer

    caplog.set_level(logging.DEBUG)
    now = datetime.now(UTC)
    ca = InternalCA(*ca_pair)
    good = ca.issue_sync(["a.example.com"], timedelta(days=1))
    other = ca.issue_sync(["a.example.com"], timedelta(days=1))
    server = SdsServer(clock=lambda: now)
    assert server.set_secret("gw", good).ok
    bad = CertBundle(good.cert_pem, other.key_pem, good.ca_pem, good.hosts)
    result = server.set_secret("gw", bad)
    assert result.codes == ["KeyMismatch"]
    assert server.serial("gw") == good.serial_hex  # refused: the good one keeps serving
    text = caplog.text + result.message + repr(server.status())
    for k in (good.key_pem, other.key_pem):
        assert not any(f in text for f in _key_fragments(k))
    assert "PRIVATE KEY" not in text
