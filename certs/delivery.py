"""Delivery through `credentialName` (pure: no I/O, no clock).

Owns: the desired kubernetes.io/tls Secret for a member cluster's gateway namespace (`tls.crt`,
`tls.key`, `ca.crt`, with owner labels and the certificate revision/serial as annotations), reading
the delivered revision back from a member Secret, the TLS hosts of rendered Istio Gateways (what a
Certificate is derived from), and setting `tls.credentialName` on the Gateway servers a certificate
covers. The Secret manifest is a dict whose repr/str redact `data`, so logging it leaks no key.
Imports certs.issuers and certs.checks.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from certs.checks import host_covered
from certs.issuers import CertBundle

REVISION_ANNOTATION = "meshfed.io/certificate-revision"
SERIAL_ANNOTATION = "meshfed.io/certificate-serial"
CERTIFICATE_LABEL = "meshfed.io/certificate"
# Istio TLS modes whose server certificate comes from credentialName.
_CREDENTIAL_MODES = {"SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL"}


class SecretManifest(dict[str, Any]):
    """A Secret manifest (a plain dict for clients) whose repr never shows `data`."""

    def __repr__(self) -> str:
        meta = self.get("metadata", {})
        keys = sorted((self.get("data") or {}).keys())
        return f"SecretManifest({meta.get('namespace')}/{meta.get('name')}, keys={keys}, data=<redacted>)"

    __str__ = __repr__


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _top_of_chain(chain_pem: bytes) -> bytes:
    """The last certificate of a PEM chain (the best trust anchor we know when the issuer gave none)."""
    end = b"-----END CERTIFICATE-----"
    blocks = [b.strip() for b in chain_pem.split(end) if b.strip()]
    return blocks[-1] + b"\n" + end + b"\n" if blocks else b""


def tls_secret(
    bundle: CertBundle,
    *,
    name: str,
    namespace: str,
    revision: int,
    labels: Mapping[str, str] | None = None,
    certificate: str | None = None,
) -> SecretManifest:
    """The TLS Secret a gateway in `namespace` reads through credentialName=`name`."""
    all_labels = dict(labels or {})
    if certificate:
        all_labels[CERTIFICATE_LABEL] = certificate
    return SecretManifest(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": all_labels,
                "annotations": {REVISION_ANNOTATION: str(revision), SERIAL_ANNOTATION: bundle.serial_hex},
            },
            "data": {
                "tls.crt": _b64(bundle.cert_pem),
                "tls.key": _b64(bundle.key_pem),
                "ca.crt": _b64(bundle.ca_pem or _top_of_chain(bundle.cert_pem)),
            },
        }
    )


def delivered_revision(secret: Mapping[str, Any] | None) -> int | None:
    """The revision a member Secret carries (None: absent or not ours)."""
    if not secret:
        return None
    value = (secret.get("metadata") or {}).get("annotations", {}).get(REVISION_ANNOTATION)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _is_gateway(obj: Mapping[str, Any]) -> bool:
    return obj.get("kind") == "Gateway" and str(obj.get("apiVersion", "")).startswith("networking.istio.io/")


def _server_hosts(server: Mapping[str, Any]) -> list[str]:
    """Gateway server hosts are 'host' or 'namespace/host'; keep the host part."""
    return [str(h).split("/", 1)[-1] for h in server.get("hosts") or []]


def _terminates_tls(server: Mapping[str, Any]) -> bool:
    tls = server.get("tls")
    return isinstance(tls, Mapping) and str(tls.get("mode", "SIMPLE")) in _CREDENTIAL_MODES


def gateway_tls_hosts(manifests: Iterable[Mapping[str, Any]]) -> list[str]:
    """Sorted, de-duplicated hosts of every TLS-terminating server of the Istio Gateways given
    ('*' is skipped: no certificate can name it)."""
    hosts: set[str] = set()
    for obj in manifests:
        if not _is_gateway(obj):
            continue
        for server in (obj.get("spec") or {}).get("servers") or []:
            if _terminates_tls(server):
                hosts.update(h.lower() for h in _server_hosts(server) if h != "*")
    return sorted(hosts)


def set_credential_name(
    manifests: Sequence[Mapping[str, Any]], cert_hosts: Sequence[str], credential_name: str
) -> list[dict[str, Any]]:
    """Copies of `manifests` where every TLS-terminating Istio Gateway server whose hosts are all
    covered by `cert_hosts` gets `tls.credentialName = credential_name` (other objects unchanged)."""
    out: list[dict[str, Any]] = []
    for obj in manifests:
        new = copy.deepcopy(dict(obj))
        if _is_gateway(new):
            for server in (new.get("spec") or {}).get("servers") or []:
                hosts = [h for h in _server_hosts(server) if h != "*"]
                if _terminates_tls(server) and hosts and all(host_covered(h, cert_hosts) for h in hosts):
                    server["tls"] = {**server["tls"], "credentialName": credential_name}
        out.append(new)
    return out
