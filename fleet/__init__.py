"""The local fleet: a hub and member clusters as real kube-apiservers on loopback, optionally each
member running Istio (its own istiod, a gateway Envoy in its own network namespace, echo backends),
with an L4 stand-in giving LoadBalancer Services VIPs that reach that gateway.

A place of its own, one module per part:
  build      building/caching the binaries (meshfed-apiserver, pilot-discovery, pilot-agent) and Envoy
  apiserver  one API server (ClusterProc), CRDs, member registration
  istio      a member's istiod, gateway, gateway objects, webhook, echo backend registration
  netns      network namespaces (one per member's data plane)
  l4         the load-balancer stand-in (VIP allocation + forwarding), `python -m fleet.l4`
  echo       the echo backends, `python -m fleet.echo`
  core       Fleet: up/down, state in fleet.json
Only the local fleet, tests and the demo use it; never the controller.
"""

from federation.registration import HUB_NAMESPACE, ensure_namespace, register_member
from fleet.apiserver import (
    APPROVAL_POLICY,
    CRD_PATH,
    FINALIZER_POLICY,
    ClusterProc,
    apply_crds,
    apply_manifests,
    free_port,
    install_finalizer_policy,
    kubeconfig_dict,
    load_member_crds,
    shared_dir,
)
from fleet.build import (
    GO_MODULE,
    ISTIO_MODULE,
    K8S_VERSION,
    LDFLAGS,
    REPO,
    apiserver_binary,
    cache_dir,
    envoy_binary,
    istio_binaries,
    istio_binary,
    say,
)
from fleet.core import Fleet, FleetState, default_topology, stop_groups
from fleet.istio import GATEWAY_SELECTOR, ISTIO_NAMESPACE, EchoBackend, MemberIstio

__all__ = [
    "APPROVAL_POLICY", "CRD_PATH", "FINALIZER_POLICY", "GATEWAY_SELECTOR", "GO_MODULE", "HUB_NAMESPACE",
    "ISTIO_MODULE", "ISTIO_NAMESPACE", "K8S_VERSION", "LDFLAGS", "REPO", "ClusterProc", "EchoBackend",
    "Fleet", "FleetState", "MemberIstio", "apiserver_binary", "apply_crds", "apply_manifests", "cache_dir",
    "default_topology", "ensure_namespace", "envoy_binary", "free_port", "install_finalizer_policy",
    "istio_binaries", "istio_binary", "kubeconfig_dict", "load_member_crds", "register_member", "say",
    "shared_dir", "stop_groups",
]
