"""The Kubernetes and Istio kinds an AccessPoint template may contain, and how to address them.

Pure data; imported by validation (accesspoint) and by the member clients (federation).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    kind: str
    group: str
    versions: tuple[str, ...]  # accepted in templates; the first is what meshfed writes and watches
    plural: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.versions[0]}" if self.group else self.versions[0]

    def accepts(self, api_version: str) -> bool:
        group, _, version = api_version.rpartition("/")
        return group == self.group and version in self.versions


ISTIO_NET = "networking.istio.io"
ISTIO_VERSIONS = ("v1", "v1beta1", "v1alpha3")

TEMPLATE_KINDS: dict[str, Kind] = {
    k.kind: k
    for k in (
        Kind("Service", "", ("v1",), "services"),
        Kind("Gateway", ISTIO_NET, ISTIO_VERSIONS, "gateways"),
        Kind("VirtualService", ISTIO_NET, ISTIO_VERSIONS, "virtualservices"),
        Kind("DestinationRule", ISTIO_NET, ISTIO_VERSIONS, "destinationrules"),
        Kind("ServiceEntry", ISTIO_NET, ISTIO_VERSIONS, "serviceentries"),
        Kind("WorkloadEntry", ISTIO_NET, ISTIO_VERSIONS, "workloadentries"),
    )
}

# Kinds meshfed writes to members besides the template (TLS Secrets from the certs controller).
SECRET = Kind("Secret", "", ("v1",), "secrets")
NAMESPACE = Kind("Namespace", "", ("v1",), "namespaces")
MANAGED_KINDS: dict[str, Kind] = {**TEMPLATE_KINDS, "Secret": SECRET}


def api_path(kind: Kind, namespace: str | None, name: str | None = None) -> str:
    """REST path of a collection or an object."""
    base = f"/api/{kind.versions[0]}" if not kind.group else f"/apis/{kind.group}/{kind.versions[0]}"
    ns = f"/namespaces/{namespace}" if namespace else ""
    tail = f"/{name}" if name else ""
    return f"{base}{ns}/{kind.plural}{tail}"
