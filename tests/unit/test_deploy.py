"""deploy/: every manifest parses, kustomizations list existing files (and every CRD), the controller
Deployment runs `meshfed controller` in-cluster with a liveness probe that matches its flag, and
the controller's hub RBAC is least-privilege and consistent. `kubectl kustomize deploy` builds when
kubectl is installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from cli.main import build_parser
from federation.crdgen import all_crds

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
NAMESPACE = "meshfed-system"
SA = "meshfed-controller"
YAML_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def objects(*relative: str) -> list[dict[str, Any]]:
    return [d for r in relative for d in docs(DEPLOY / r)]


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def test_there_is_something_to_check() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in YAML_FILES}
    assert {"kustomization.yaml", "rbac/controller.yaml", "controller/deployment.yaml"} <= names


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_every_yaml_parses_into_objects(path: Path) -> None:
    found = docs(path)
    assert found, f"{path} holds no document"
    for doc in found:
        assert isinstance(doc, dict), f"{path}: a document is not a mapping"
        assert doc.get("apiVersion") and doc.get("kind"), f"{path}: apiVersion/kind missing"
        if doc["kind"] != "Kustomization":
            assert doc.get("metadata", {}).get("name"), f"{path}: {doc['kind']} without metadata.name"


def kustomizations() -> list[Path]:
    return sorted(DEPLOY.rglob("kustomization.yaml"))


@pytest.mark.parametrize("path", kustomizations(), ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_kustomization_lists_existing_files(path: Path) -> None:
    (k,) = docs(path)
    assert k["kind"] == "Kustomization"
    resources = k.get("resources") or []
    assert resources and len(resources) == len(set(resources))
    for entry in resources:
        target = path.parent / entry
        assert target.exists(), f"{path.relative_to(DEPLOY)} lists {entry}, which does not exist"
        if target.is_dir():
            assert (target / "kustomization.yaml").exists(), f"{entry} is a directory without a kustomization"


@pytest.mark.parametrize("path", kustomizations(), ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_kustomization_only_lists_resources(path: Path) -> None:
    # fleet.testing.kustomize_objects (the RBAC integration test) builds exactly these.
    (k,) = docs(path)
    assert set(k) <= {"apiVersion", "kind", "resources"}, f"{path.relative_to(DEPLOY)}: {sorted(k)}"


def test_every_rbac_file_is_listed_on_the_hub() -> None:
    (k,) = docs(DEPLOY / "kustomization.yaml")
    on_disk = {f"rbac/{p.name}" for p in (DEPLOY / "rbac").glob("*.yaml")}
    missing = on_disk - set(k["resources"])
    assert not missing, f"deploy/rbac files not in deploy/kustomization.yaml: {sorted(missing)}"
    assert "member" not in k["resources"], "deploy/member/ is for member clusters, not the hub"


def test_member_kustomization_lists_every_file_of_the_directory() -> None:
    (k,) = docs(DEPLOY / "member" / "kustomization.yaml")
    files = {p.name for p in (DEPLOY / "member").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(k["resources"]) == files


def test_top_level_kustomization_has_every_crd_rbac_and_the_controller() -> None:
    (k,) = docs(DEPLOY / "kustomization.yaml")
    resources = set(k["resources"])
    crds = {f"crds/{c['metadata']['name']}.yaml" for c in all_crds()}
    assert crds <= resources, f"CRDs missing from deploy/kustomization.yaml: {sorted(crds - resources)}"
    on_disk = {f"crds/{p.name}" for p in (DEPLOY / "crds").glob("*.yaml")}
    assert on_disk <= resources, f"deploy/crds files not in deploy/kustomization.yaml: {sorted(on_disk - resources)}"
    assert {"rbac/controller.yaml", "controller"} <= resources


def test_controller_kustomization_lists_every_file_of_the_directory() -> None:
    (k,) = docs(DEPLOY / "controller" / "kustomization.yaml")
    files = {p.name for p in (DEPLOY / "controller").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(k["resources"]) == files


# ---- the controller ---------------------------------------------------------------------------

CONTROLLER = objects("controller/namespace.yaml", "controller/serviceaccount.yaml", "controller/deployment.yaml")


def container() -> dict[str, Any]:
    deployment = one(CONTROLLER, "Deployment", "meshfed-controller")
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(c)


def test_namespace_and_service_account() -> None:
    one(CONTROLLER, "Namespace", NAMESPACE)
    sa = one(CONTROLLER, "ServiceAccount", SA)
    assert sa["metadata"]["namespace"] == NAMESPACE


def test_deployment_runs_three_sharded_replicas_with_its_service_account() -> None:
    # Issue 11: replicas share 32 shards through Leases (federation/shards.py), replaced one at a time.
    deployment = one(CONTROLLER, "Deployment", "meshfed-controller")
    spec = deployment["spec"]
    assert deployment["metadata"]["namespace"] == NAMESPACE
    assert spec["replicas"] == 3
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    args = build_parser().parse_args(container()["args"])
    assert args.shards > 0 and args.renew_deadline < args.lease_duration
    assert container()["readinessProbe"]["httpGet"]["path"] == "/readyz"
    probe_port = container()["readinessProbe"]["httpGet"]["port"]
    assert urlparse(f"http://{args.http_address}").port == next(
        p["containerPort"] for p in container()["ports"] if p["name"] == probe_port)
    pdb = one(objects("controller/pdb.yaml"), "PodDisruptionBudget", "meshfed-controller")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    leases = one(objects("rbac/leases.yaml"), "Role", "meshfed-leases")
    assert leases["metadata"]["namespace"] == NAMESPACE
    assert leases["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                                "verbs": ["get", "list", "create", "update"]}]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert spec["template"]["spec"]["serviceAccountName"] == SA


def test_command_is_meshfed_controller_in_cluster() -> None:
    c = container()
    argv = [*c.get("command", []), *c.get("args", [])]
    assert argv[:2] == ["meshfed", "controller"]
    args = build_parser().parse_args(argv[1:])  # the CLI accepts exactly these flags
    assert args.kubeconfig is None  # in-cluster service account
    assert args.liveness == "http://0.0.0.0:8080/healthz"
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    assert env.get("MESHFED_HUB_ID"), "the hub id goes into member owner labels: set it explicitly"


def test_liveness_probe_matches_the_liveness_flag() -> None:
    c = container()
    args = build_parser().parse_args([*c["command"], *c["args"]][1:])
    url = urlparse(args.liveness)
    probe = c["livenessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    port = ports[probe["port"]] if isinstance(probe["port"], str) else probe["port"]
    assert (probe["path"], port) == (url.path, url.port)
    assert url.hostname == "0.0.0.0"  # the kubelet probes the Pod IP


def test_resources_and_security_context() -> None:
    c = container()
    assert set(c["resources"]["requests"]) == {"cpu", "memory"}
    assert set(c["resources"]["limits"]) >= {"memory"}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    if c["securityContext"].get("readOnlyRootFilesystem"):
        assert "/tmp" in {m["mountPath"] for m in c.get("volumeMounts", [])}, "the kube client writes cert files"


# ---- RBAC -----------------------------------------------------------------------------------

RBAC = objects("rbac/controller.yaml")
CRD_PLURALS = {c["spec"]["names"]["plural"]: c for c in all_crds()}


def rules(kind: str, name: str) -> list[dict[str, Any]]:
    return list(one(RBAC, kind, name)["rules"])


def allowed(rule_list: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in rule_list)


def test_no_wildcards_and_only_known_meshfed_resources() -> None:
    for obj in RBAC:
        for rule in obj.get("rules", []):
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], f"{obj['metadata']['name']}: wildcard in {key}"
            if "meshfed.io" in rule["apiGroups"]:
                for res in rule["resources"]:
                    plural, _, sub = res.partition("/")
                    assert plural in CRD_PLURALS, f"{res} is no meshfed CRD"
                    if sub:
                        assert sub == "status"
                        assert "status" in CRD_PLURALS[plural]["spec"]["versions"][0].get("subresources", {})


def test_controller_can_do_what_the_foundation_does() -> None:
    cluster = rules("ClusterRole", "meshfed-controller")
    for plural in ("memberclusters", "placementpolicies", "accesspoints"):
        for verb in ("get", "list", "watch"):
            assert allowed(cluster, "meshfed.io", plural, verb), f"{verb} {plural}"
    for plural in ("memberclusters", "accesspoints"):
        assert allowed(cluster, "meshfed.io", f"{plural}/status", "patch"), f"patch {plural}/status"
    assert allowed(cluster, "meshfed.io", "accesspoints", "patch")  # finalizer
    assert allowed(cluster, "", "events", "create")
    for verb in ("create", "update", "delete", "deletecollection"):
        for plural in ("memberclusters", "placementpolicies", "accesspoints"):
            assert not allowed(cluster, "meshfed.io", plural, verb), f"controller may not {verb} {plural}"


def test_secrets_only_in_meshfed_system_and_read_only() -> None:
    for obj in RBAC:
        if obj["kind"] == "ClusterRole":
            assert not any("secrets" in r["resources"] for r in obj["rules"]), "no cluster-wide Secret access"
    role = one(RBAC, "Role", "meshfed-controller-kubeconfigs")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert allowed(role["rules"], "", "secrets", "get")
    for verb in ("create", "update", "patch", "delete"):
        assert not allowed(role["rules"], "", "secrets", verb)


def test_certificates_touch_hub_secrets_in_meshfed_system_only_and_watch_them_by_metadata() -> None:
    objs = objects("rbac/certificates.yaml")
    hub = list(one(objs, "ClusterRole", "meshfed-controller-certificates")["rules"])
    assert not any("secrets" in r["resources"] for r in hub), "no cluster-wide Secret access on the hub"
    for verb in ("get", "list", "watch"):  # ACME DNS-01 through a DNSProvider; issuers
        assert allowed(hub, "meshfed.io", "dnsproviders", verb)
        assert allowed(hub, "meshfed.io", "certificateissuers", verb)
    for verb in ("create", "update", "patch", "delete"):
        assert not allowed(hub, "meshfed.io", "dnsproviders", verb)
        assert not allowed(hub, "meshfed.io", "certificateissuers", verb)
    role = one(objs, "Role", "meshfed-controller-certificate-secrets")
    assert role["metadata"]["namespace"] == NAMESPACE
    # list/watch only to follow the referenced CA/account Secrets (metadata-only, by name); no update.
    assert [sorted(r["verbs"]) for r in role["rules"]] == [["create", "delete", "get", "list", "patch", "watch"]]
    assert [r["resources"] for r in role["rules"]] == [["secrets"]]
    binding = one(objs, "RoleBinding", "meshfed-controller-certificate-secrets")
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": SA, "namespace": NAMESPACE}]


def test_bindings_bind_existing_roles_to_the_service_account() -> None:
    bindings = [o for o in RBAC if o["kind"] in ("ClusterRoleBinding", "RoleBinding")]
    assert {b["kind"] for b in bindings} == {"ClusterRoleBinding", "RoleBinding"}
    for b in bindings:
        ref = b["roleRef"]
        role = one(RBAC, ref["kind"], ref["name"])
        if b["kind"] == "RoleBinding":
            assert role["metadata"]["namespace"] == b["metadata"]["namespace"] == NAMESPACE
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": SA, "namespace": NAMESPACE}]


def test_sds_reads_certificates_and_bundles_and_writes_only_certificate_status() -> None:
    objs = objects("rbac/sds.yaml")
    cluster = list(one(objs, "ClusterRole", "meshfed-sds")["rules"])
    for verb in ("get", "list", "watch"):
        assert allowed(cluster, "meshfed.io", "certificates", verb)
    assert allowed(cluster, "meshfed.io", "certificates/status", "patch")
    for verb in ("create", "update", "patch", "delete"):
        assert not allowed(cluster, "meshfed.io", "certificates", verb), f"sds may not {verb} certificates"
    granted = {res for r in cluster for res in r["resources"]}
    assert granted == {"certificates", "certificates/status"}
    role = one(objs, "Role", "meshfed-sds-bundles")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert [sorted(r["verbs"]) for r in role["rules"]] == [["get", "list", "watch"]]
    assert [r["resources"] for r in role["rules"]] == [["secrets"]]
    sa = one(objs, "ServiceAccount", "meshfed-sds")
    for b in (o for o in objs if o["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        one(objs, b["roleRef"]["kind"], b["roleRef"]["name"])
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": "meshfed-sds", "namespace": NAMESPACE}]
    assert sa["metadata"]["namespace"] == NAMESPACE
    for obj in objs:
        for rule in obj.get("rules", []):
            assert not any("*" in rule[k] for k in ("apiGroups", "resources", "verbs"))


# ---- the controller's rights, all files together ------------------------------------------------

CONTROLLER_FILES = ("rbac/controller.yaml", "rbac/rollouts.yaml", "rbac/dns.yaml", "rbac/certificates.yaml",
                    "rbac/tenancy.yaml")
HUB_RBAC_FILES = sorted(f"rbac/{p.name}" for p in (DEPLOY / "rbac").glob("*.yaml"))
MEMBER = objects("member/namespace.yaml", "member/serviceaccount.yaml", "member/rbac.yaml")
SA_SUBJECT = {"kind": "ServiceAccount", "name": SA, "namespace": NAMESPACE}


def controller_rules(namespace: str | None = None) -> list[dict[str, Any]]:
    """Every rule bound to the controller's ServiceAccount on the hub: cluster-wide (namespace None),
    or effective in `namespace` (cluster-wide rules plus the Roles bound there)."""
    objs = [o for f in HUB_RBAC_FILES for o in objects(f)]
    out: list[dict[str, Any]] = []
    for b in objs:
        if b["kind"] not in ("ClusterRoleBinding", "RoleBinding") or SA_SUBJECT not in b["subjects"]:
            continue
        if b["kind"] == "RoleBinding" and b["metadata"]["namespace"] != namespace:
            continue
        ref = b["roleRef"]
        out += one(objs, ref["kind"], ref["name"])["rules"]
    return out


@pytest.mark.parametrize("path", [*HUB_RBAC_FILES, "member/rbac.yaml"])
def test_no_wildcards_anywhere(path: str) -> None:
    for obj in objects(path):
        for rule in obj.get("rules", []):
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], f"{path}: {obj['metadata']['name']}: wildcard in {key}"
                assert not any(v.endswith("/*") for v in rule[key]), f"{path}: subresource wildcard"
            assert "nonResourceURLs" not in rule, f"{path}: non-resource URLs are for the default roles"
            if "meshfed.io" in rule["apiGroups"]:
                for res in rule["resources"]:
                    plural, _, sub = res.partition("/")
                    assert plural in CRD_PLURALS, f"{path}: {res} is no meshfed CRD"
                    if sub:
                        assert sub == "status"
                        assert "status" in CRD_PLURALS[plural]["spec"]["versions"][0].get("subresources", {})


@pytest.mark.parametrize("path", [*CONTROLLER_FILES, "member/rbac.yaml"])
def test_every_rule_says_which_code_path_needs_it(path: str) -> None:
    lines = (DEPLOY / path).read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("- apiGroups:"):
            assert lines[i - 1].strip().startswith("#"), f"{path}:{i + 1}: a rule without its comment"


@pytest.mark.parametrize("path", CONTROLLER_FILES)
def test_controller_files_bind_their_roles_to_the_controller_only(path: str) -> None:
    objs = objects(path)
    for b in (o for o in objs if o["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        role = one(objs, b["roleRef"]["kind"], b["roleRef"]["name"])  # in the same file
        if b["kind"] == "RoleBinding":
            assert role["metadata"]["namespace"] == b["metadata"]["namespace"] == NAMESPACE
        assert b["subjects"] == [SA_SUBJECT], f"{path}: {b['metadata']['name']}"
    assert {o["kind"] for o in objs} <= {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


def test_hub_secrets_never_cluster_wide_and_only_in_meshfed_system() -> None:
    for path in HUB_RBAC_FILES:
        for obj in objects(path):
            if obj["kind"] == "ClusterRole":
                assert not any("secrets" in r["resources"] for r in obj["rules"]), \
                    f"{path}: {obj['metadata']['name']}: Secret access on the hub is per namespace (meshfed-system)"
            if obj["kind"] == "Role" and any("secrets" in r["resources"] for r in obj["rules"]):
                assert obj["metadata"]["namespace"] == NAMESPACE, f"{path}: {obj['metadata']['name']}"
    assert not any("secrets" in r["resources"] for r in controller_rules())
    assert not any("secrets" in r["resources"] for r in controller_rules("payments"))
    in_system = controller_rules(NAMESPACE)
    for verb in ("get", "list", "watch", "create", "patch", "delete"):  # certificates.yaml documents each
        assert allowed(in_system, "", "secrets", verb), verb
    assert not allowed(in_system, "", "secrets", "update")


def test_the_controller_never_writes_what_people_own() -> None:
    rules_ = controller_rules()
    for plural in ("memberclusters", "placementpolicies", "accesspoints", "nameservices", "dnsproviders",
                   "certificateissuers", "rolloutapprovals"):
        for verb in ("update", "delete", "deletecollection"):
            assert not allowed(rules_, "meshfed.io", plural, verb), f"controller may not {verb} {plural}"
    for plural in ("memberclusters", "placementpolicies", "accesspoints", "nameservices", "dnsproviders",
                   "certificateissuers"):
        assert not allowed(rules_, "meshfed.io", plural, "create"), f"controller may not create {plural}"
    for plural in ("memberclusters", "placementpolicies", "dnsproviders", "certificateissuers", "rolloutapprovals"):
        assert not allowed(rules_, "meshfed.io", plural, "patch"), f"{plural}: spec/metadata are people's"
    for verb in ("get", "update", "patch", "watch"):
        assert not allowed(rules_, "apps", "controllerrevisions", verb), f"{verb} controllerrevisions is not needed"
    assert not any(r for r in rules_ if "rbac.authorization.k8s.io" in r["apiGroups"]), "no RBAC escalation"


def test_rollouts_can_keep_history_and_approvals() -> None:
    objs = objects("rbac/rollouts.yaml")
    cluster = list(one(objs, "ClusterRole", "meshfed-controller-rollouts")["rules"])
    for verb in ("list", "create", "delete"):
        assert allowed(cluster, "apps", "controllerrevisions", verb), verb
    for verb in ("list", "watch", "create"):
        assert allowed(cluster, "meshfed.io", "rolloutapprovals", verb), verb
    assert allowed(cluster, "meshfed.io", "rolloutapprovals/status", "patch")
    assert {res for r in cluster for res in r["resources"]} == {
        "controllerrevisions", "rolloutapprovals", "rolloutapprovals/status"}


def test_dns_reads_its_objects_writes_status_and_finalizers_and_gets_its_secrets() -> None:
    objs = objects("rbac/dns.yaml")
    cluster = list(one(objs, "ClusterRole", "meshfed-controller-dns")["rules"])
    for plural in ("nameservices", "dnsproviders"):
        for verb in ("list", "watch"):
            assert allowed(cluster, "meshfed.io", plural, verb), f"{verb} {plural}"
        assert allowed(cluster, "meshfed.io", f"{plural}/status", "patch")
    assert allowed(cluster, "meshfed.io", "nameservices", "patch")  # the cleanup finalizer
    assert not allowed(cluster, "meshfed.io", "dnsproviders", "patch")
    role = one(objs, "Role", "meshfed-controller-dns-secrets")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]


def test_certificates_file_holds_hub_objects_only() -> None:
    objs = objects("rbac/certificates.yaml")
    names = {o["metadata"]["name"] for o in objs}
    assert not any(n.startswith("meshfed-member") for n in names), "member RBAC belongs to deploy/member/"
    for b in (o for o in objs if o["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        assert b["subjects"] == [SA_SUBJECT]


# ---- members ----------------------------------------------------------------------------------


def test_member_rbac_covers_every_kind_the_controller_writes_and_watches() -> None:
    from accesspoint.kinds import MANAGED_KINDS
    from accesspoint.kinds import NAMESPACE as NAMESPACE_KIND

    sa = one(MEMBER, "ServiceAccount", "meshfed-hub")
    one(MEMBER, "Namespace", sa["metadata"]["namespace"])
    binding = one(MEMBER, "ClusterRoleBinding", "meshfed-member")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "meshfed-hub",
                                    "namespace": sa["metadata"]["namespace"]}]
    role = one(MEMBER, binding["roleRef"]["kind"], binding["roleRef"]["name"])
    member_rules = list(role["rules"])
    for kind in MANAGED_KINDS.values():  # executor: create/apply/delete/get; members.py: list+watch
        for verb in ("get", "list", "watch", "create", "patch", "delete"):
            assert allowed(member_rules, kind.group, kind.plural, verb), f"{verb} {kind.plural}"
        assert not allowed(member_rules, kind.group, kind.plural, "update")
        assert not allowed(member_rules, kind.group, kind.plural, "deletecollection")
    assert allowed(member_rules, NAMESPACE_KIND.group, NAMESPACE_KIND.plural, "create")
    for verb in ("list", "watch", "update", "patch", "delete"):
        assert not allowed(member_rules, "", "namespaces", verb), f"{verb} namespaces is not needed"
    # federation/members.py: the member's identity is its kube-system namespace's UID: get that one only
    gets = [r for r in member_rules if "" in r["apiGroups"] and "namespaces" in r["resources"] and "get" in r["verbs"]]
    assert gets and all(r.get("resourceNames") == ["kube-system"] for r in gets), gets
    # federation/istiod.py: the Pods a Gateway selector matches (list only: no get, no watch, no writes)
    assert allowed(member_rules, "", "pods", "list")
    for verb in ("get", "watch", "create", "update", "patch", "delete"):
        assert not allowed(member_rules, "", "pods", verb), f"{verb} pods is not needed"
    # federation/members.py _watch_workloads: followWorkload's Deployments (metadata; list + watch only)
    for verb in ("list", "watch"):
        assert allowed(member_rules, "apps", "deployments", verb), verb
    for verb in ("get", "create", "update", "patch", "delete"):
        assert not allowed(member_rules, "apps", "deployments", verb), f"{verb} deployments is not needed"
    granted = {(g, res) for r in member_rules for g in r["apiGroups"] for res in r["resources"]}
    wanted = {(k.group, k.plural) for k in MANAGED_KINDS.values()} | {("", "namespaces"), ("", "pods"),
                                                                        ("apps", "deployments")}
    assert granted == wanted, f"more than the controller needs: {sorted(granted - wanted)}"


def test_member_istiod_access_is_services_proxy_on_istiod_only() -> None:
    objs = objects("member/istiod/rbac.yaml")
    (k,) = docs(DEPLOY / "member" / "istiod" / "kustomization.yaml")
    assert k["resources"] == ["rbac.yaml"]
    role = one(objs, "Role", "meshfed-istiod-debug")
    assert role["metadata"]["namespace"] == "istio-system"
    assert role["rules"] == [{"apiGroups": [""], "resources": ["services/proxy"], "resourceNames": ["istiod:15014"],
                              "verbs": ["get"]}]
    binding = one(objs, "RoleBinding", "meshfed-istiod-debug")
    assert binding["roleRef"]["name"] == "meshfed-istiod-debug" and binding["metadata"]["namespace"] == "istio-system"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "meshfed-hub", "namespace": "meshfed-system"}]


def test_member_gateway_stats_access_is_pods_list_and_proxy_get_in_istio_system_only() -> None:
    objs = objects("member/gateway-stats/rbac.yaml")
    (k,) = docs(DEPLOY / "member" / "gateway-stats" / "kustomization.yaml")
    assert k["resources"] == ["rbac.yaml"]
    role = one(objs, "Role", "meshfed-gateway-stats")
    assert role["metadata"]["namespace"] == "istio-system"
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
                             {"apiGroups": [""], "resources": ["pods/proxy"], "verbs": ["get"]}]
    binding = one(objs, "RoleBinding", "meshfed-gateway-stats")
    assert binding["roleRef"]["name"] == "meshfed-gateway-stats" and binding["metadata"]["namespace"] == "istio-system"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "meshfed-hub", "namespace": "meshfed-system"}]


# ---- kustomize --------------------------------------------------------------------------------

KUBECTL = shutil.which("kubectl") or ("/usr/bin/kubectl" if Path("/usr/bin/kubectl").exists() else None)


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_kubectl_kustomize_builds_everything() -> None:
    assert KUBECTL is not None
    out = subprocess.run([KUBECTL, "kustomize", str(DEPLOY)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    built = [d for d in yaml.safe_load_all(out.stdout) if d]
    crds = {o["metadata"]["name"] for o in built if o["kind"] == "CustomResourceDefinition"}
    assert crds == {c["metadata"]["name"] for c in all_crds()}
    one(built, "Deployment", "meshfed-controller")
    one(built, "Namespace", NAMESPACE)
    one(built, "ClusterRoleBinding", "meshfed-controller")
    assert len({(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in built}) == len(built)
    for name in ("meshfed-controller-rollouts", "meshfed-controller-dns", "meshfed-controller-certificates"):
        one(built, "ClusterRoleBinding", name)


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_kubectl_kustomize_builds_the_member_rbac() -> None:
    assert KUBECTL is not None
    out = subprocess.run([KUBECTL, "kustomize", str(DEPLOY / "member")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    built = [d for d in yaml.safe_load_all(out.stdout) if d]
    # Nothing namespaced outside meshfed-system: a member without Istio (no istio-system) takes it as is;
    # the istio-system Roles are the optional deploy/member/istiod and deploy/member/gateway-stats.
    assert {o["kind"] for o in built} == {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"}


def test_tenant_roles_stay_in_their_namespace_and_platform_holds_the_cluster_kinds() -> None:
    people = objects("rbac/people.yaml")
    cluster_kinds = ("memberclusters", "dnsproviders", "certificateissuers", "tenancypolicies")
    for name in ("meshfed-tenant", "meshfed-tenant-edit", "meshfed-tenant-view"):
        rules_ = one(people, "ClusterRole", name)["rules"]
        for plural in cluster_kinds:
            assert not any(plural in r["resources"] for r in rules_), f"{name} reaches {plural}"
        assert not any(r["resources"][0].endswith("/status") for r in rules_ for _ in r["resources"])
        assert not allowed(rules_, "meshfed.io", "accesspoints", "approve"), "approve stays meshfed-approver's"
        for plural in ("accesspoints", "nameservices", "certificates", "rolloutapprovals"):
            assert allowed(rules_, "meshfed.io", plural, "get")
    edit = one(people, "ClusterRole", "meshfed-tenant-edit")
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    view = one(people, "ClusterRole", "meshfed-tenant-view")
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert not allowed(view["rules"], "meshfed.io", "accesspoints", "create")
    platform = one(people, "ClusterRole", "meshfed-platform")["rules"]
    for plural in cluster_kinds:
        assert allowed(platform, "meshfed.io", plural, "create")
    assert allowed(controller_rules(), "meshfed.io", "tenancypolicies", "watch")
    assert not allowed(controller_rules(), "meshfed.io", "tenancypolicies", "patch")


# ---- the optional finalizer policy (deploy/admission/finalizers.yaml) ------------------------------

def test_finalizer_policy_sets_the_controllers_finalizer_on_create_only() -> None:
    """The API server adds exactly the finalizer the controllers remove (a different string would hold
    every deletion for ever), on CREATE only (an UPDATE must not put back a removed finalizer), for
    the kinds whose controllers add it themselves otherwise, and a failing policy never refuses a
    create. Integration: tests/integration/test_finalizer_policy.py."""
    from federation.hubwriter import FINALIZER

    policy = objects("admission/finalizers.yaml")
    spec = one(policy, "MutatingAdmissionPolicy", "meshfed-cleanup-finalizer")["spec"]
    assert one(policy, "MutatingAdmissionPolicyBinding", "meshfed-cleanup-finalizer")["spec"]["policyName"] == \
        "meshfed-cleanup-finalizer"
    assert spec["failurePolicy"] == "Ignore"
    (rule,) = spec["matchConstraints"]["resourceRules"]
    assert rule["operations"] == ["CREATE"]
    assert set(rule["resources"]) == {"accesspoints", "nameservices"}
    (mutation,) = spec["mutations"]
    assert mutation["patchType"] == "JSONPatch"
    assert mutation["jsonPatch"]["expression"].count(f'"{FINALIZER}"') == 2
    assert f"'{FINALIZER}'" in spec["matchConditions"][0]["expression"]
    # Optional (MutatingAdmissionPolicy needs Kubernetes 1.36, or 1.34 with a feature gate): not in the
    # hub's kustomization, which must apply on any supported hub.
    (k,) = docs(DEPLOY / "kustomization.yaml")
    assert not any(r.startswith("admission") for r in k["resources"])
