"""Istio mesh roles of member clusters and zones as control domains, pure.

Owns: the verdict on each MemberCluster's declared role (`spec.mesh`: its own control plane, or an Istio
remote of another member), the control domains a zone target places on (a primary with its remotes), and
the refusal of Istio kinds for a remote. Imports placement.models and accesspoint.meta only; no I/O.

Why a remote never receives Istio kinds: istiod reads Istio config (networking, security, telemetry,
Gateway API) only from its own cluster's API server; objects written to a remote are ignored by
Istio (istio/istio#31211), so writing them there would be reported Applied while nothing routes.

Role verdicts (condition `MeshRole` on the MemberCluster):
  * Primary (absent spec.mesh): True, OwnControlPlane.
  * Remote of a registered member with its own control plane in the same zone: True, RemoteOf.
  * Remote whose primary is in another zone or region: True, PrimaryInOtherZone, with a warning. Istio
    supports it (an istiod reads any remote it has a secret for), and refusing it would be worse: meshfed
    would then treat the cluster as having its own control plane. The remote belongs to its primary's
    control domain (a zone target on the primary's zone covers it; its own zone gets no domain from it).
  * Remote of a member that is not registered, of itself, or of another remote: False (PrimaryNotFound,
    PrimaryIsSelf, PrimaryIsRemote). Istio has no chained remotes: the cluster named as primary runs no
    istiod of its own to read this one. The cluster is then placed on by no zone target, and Istio kinds
    are still refused for it (it was declared a remote).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from accesspoint.meta import Condition
from placement.models import ClusterFacts, MemberClusterSpec

MESH_ROLE = "MeshRole"
PRIMARY_FIELD = "spec.mesh.primary"
# API groups whose objects istiod reads only from its own (config) cluster.
ISTIO_CONFIG_GROUPS = frozenset({
    "networking.istio.io", "security.istio.io", "telemetry.istio.io", "extensions.istio.io",
    "gateway.networking.k8s.io", "gateway.networking.x-k8s.io",
})


@dataclass(frozen=True)
class RoleVerdict:
    """The MeshRole condition's parts for one member, and the short form printed by `kubectl get mc`."""

    status: str  # "True" | "False"
    reason: str
    message: str
    printed: str

    @property
    def warning(self) -> bool:
        return self.status != "True" or self.reason == "PrimaryInOtherZone"

    @property
    def problem(self) -> str | None:
        """Why the declared role cannot be used (the role is refused), else None."""
        return self.message if self.status != "True" else None

    def condition(self, observed_generation: int | None = None) -> Condition:
        return Condition(type=MESH_ROLE, status=self.status, reason=self.reason, message=self.message,
                         observed_generation=observed_generation)


def role_verdict(name: str, spec: MemberClusterSpec, members: Mapping[str, MemberClusterSpec]) -> RoleVerdict:
    """Judge one member's declared mesh role against every registered member's spec."""
    primary = spec.mesh_primary
    if primary is None:
        return RoleVerdict("True", "OwnControlPlane", "runs its own Istio control plane (istiod and gateway)",
                           "Primary")
    if primary == name:
        return RoleVerdict("False", "PrimaryIsSelf",
                           f"{PRIMARY_FIELD}: {name} names itself; a remote is read by another member's istiod "
                           "(remove spec.mesh for a cluster with its own control plane)", "Invalid(PrimaryIsSelf)")
    target = members.get(primary)
    if target is None:
        return RoleVerdict("False", "PrimaryNotFound",
                           f"{PRIMARY_FIELD}: MemberCluster {primary!r} is not registered; Istio kinds are not "
                           "written to this remote and no zone target places on it", "Invalid(PrimaryNotFound)")
    if target.mesh_primary is not None:
        return RoleVerdict("False", "PrimaryIsRemote",
                           f"{PRIMARY_FIELD}: {primary} is itself an Istio remote (of {target.mesh_primary}); "
                           f"Istio has no chained remotes: name the cluster whose istiod reads {name}",
                           "Invalid(PrimaryIsRemote)")
    if (target.region, target.zone) != (spec.region, spec.zone):
        return RoleVerdict("True", "PrimaryInOtherZone",
                           f"Istio remote of {primary}, whose zone {target.region}/{target.zone} differs from this "
                           f"cluster's {spec.region}/{spec.zone} ({PRIMARY_FIELD}): accepted, as Istio allows it; "
                           f"this cluster belongs to the control domain of {primary}'s zone, and a zone target on "
                           f"{spec.zone} does not reach it", f"Remote({primary})")
    return RoleVerdict("True", "RemoteOf",
                       f"Istio remote of {primary}: Istio config for it is written to {primary}", f"Remote({primary})")


def role_verdicts(members: Mapping[str, MemberClusterSpec]) -> dict[str, RoleVerdict]:
    """Every member's verdict (a change in one member can change another's: its primary went away)."""
    return {name: role_verdict(name, spec, members) for name, spec in members.items()}


def remote_refusal(cluster: ClusterFacts, groups: Iterable[str]) -> str | None:
    """Why `cluster` must not receive objects of these API groups, or None: a cluster declared an Istio
    remote gets no Istio config (nothing is written to it); the message names its primary."""
    if cluster.mesh_primary is None:
        return None
    kinds = sorted(set(groups) & ISTIO_CONFIG_GROUPS)
    if not kinds:
        return None
    if cluster.mesh_problem is not None:
        where = f"its role is invalid ({cluster.mesh_problem})"
    else:
        where = (f"Istio reads config only from its primary {cluster.mesh_primary}: target zone {cluster.zone} "
                 f"(placement.target: Zone) or cluster {cluster.mesh_primary} instead")
    return (f"{cluster.name} is an Istio remote of {cluster.mesh_primary} (spec.mesh): {', '.join(kinds)} "
            f"objects are not written there; {where}; nothing was changed in this cluster")


@dataclass(frozen=True)
class Domain:
    """One zone's control domain: a member with its own control plane and its valid remotes."""

    primary: ClusterFacts
    remotes: tuple[ClusterFacts, ...]

    @property
    def clusters(self) -> tuple[ClusterFacts, ...]:
        return (self.primary, *self.remotes)


def domains(clusters: Iterable[ClusterFacts]) -> dict[str, Domain]:
    """Control domains keyed by primary name (remotes sorted by name); remotes with an invalid role or
    whose primary is unknown belong to none."""
    by_name = {c.name: c for c in clusters}
    remotes: dict[str, list[ClusterFacts]] = {}
    for c in by_name.values():
        p = c.mesh_primary
        if p is not None and c.mesh_problem is None and p in by_name and by_name[p].mesh_primary is None:
            remotes.setdefault(p, []).append(c)
    return {name: Domain(c, tuple(sorted(remotes.get(name, []), key=lambda r: r.name)))
            for name, c in by_name.items() if c.mesh_primary is None}
