"""Compact member-cache records (federation/members.py `compact`, accesspoint/plan.py `verdict`): every
reader of cached member objects answers the same on a compact record as on the whole object; a version
is compared once (a write's answer at once, a watch's at the owner's next plan) and the plan then reads
the verdict; drift is still found. Pure: no I/O."""

from __future__ import annotations

import copy
import sys
import tracemalloc
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from accesspoint.istioverdict import (
    analyzer_messages,
    bound_virtualservices,
    gateway_api_verdict,
    gateway_selectors,
    routed_hosts,
)
from accesspoint.ownership import HASH_ANNOTATION, Owner, owner_of
from accesspoint.plan import IN_SYNC, OUT_OF_SYNC, compared, plan, up_to_date, verdict
from accesspoint.render import content_hash, key_of
from certs.delivery import REVISION_ANNOTATION, SERIAL_ANNOTATION, delivered_revision
from federation.controller import _vip
from federation.members import OwnedCache, compact, deep_size, slim

HUB = "hub-1"
OWNER = Owner(HUB, "payments", "shop")


def desired(api_version: str, kind: str, name: str, body: dict[str, Any],
            annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """A rendered object: owner labels, the content-hash annotation over the rest."""
    obj: dict[str, Any] = {"apiVersion": api_version, "kind": kind,
                           "metadata": {"name": name, "namespace": "payments", "labels": OWNER.labels(),
                                        "annotations": dict(annotations or {})}, **copy.deepcopy(body)}
    obj["metadata"]["annotations"][HASH_ANNOTATION] = content_hash(obj)
    return obj


def on_member(obj: dict[str, Any], rv: int = 7, status: dict[str, Any] | None = None,
              defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the member API server answers for `obj`: server fields, defaults, managedFields, status."""
    out = copy.deepcopy(obj)
    meta = out["metadata"]
    meta.update(uid=f"uid-{meta['name']}-{out['kind']}", resourceVersion=str(rv), generation=2,
                creationTimestamp="2026-12-05T10:00:00Z",
                managedFields=[{"manager": "meshfed", "operation": "Apply", "fieldsV1": {"f:spec": {}}}])
    meta["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] = "{" + "x" * 2000 + "}"
    for section, extra in (defaults or {}).items():
        out.setdefault(section, {}).update(extra)
    if status is not None:
        out["status"] = status
    return out


ROUTES = {"http": [{"match": [{"uri": {"prefix": "/pay"}}], "retries": {"attempts": 3},
                    "route": [{"destination": {"host": "pay", "port": {"number": 8080}}, "weight": 90},
                              {"destination": {"host": "pay-canary.payments.svc.cluster.local"}, "weight": 10}]}],
          "tcp": [{"route": [{"destination": {"host": "db.data"}}]}]}


def bundle() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(desired, what the member holds) for an AccessPoint using every kind a reader looks at."""
    svc = desired("v1", "Service", "shop-gw", {"spec": {"type": "LoadBalancer", "ports": [{"port": 443}]}})
    gw = desired("networking.istio.io/v1", "Gateway", "shop",
                 {"spec": {"selector": {"istio": "ingressgateway"},
                           "servers": [{"port": {"number": 443, "name": "https", "protocol": "HTTPS"},
                                        "hosts": ["shop.example"]}]}})
    vs = desired("networking.istio.io/v1", "VirtualService", "shop",
                 {"spec": {"hosts": ["shop.example"], "gateways": ["shop", "mesh"], **ROUTES}})
    dr = desired("networking.istio.io/v1", "DestinationRule", "pay", {"spec": {"host": "pay"}})
    api_gw = desired("gateway.networking.k8s.io/v1", "Gateway", "shop-api",
                     {"spec": {"gatewayClassName": "istio", "listeners": [{"name": "http", "port": 80,
                                                                           "protocol": "HTTP"}]}})
    route = desired("gateway.networking.k8s.io/v1", "HTTPRoute", "shop",
                    {"spec": {"parentRefs": [{"name": "shop-api"}, {"name": "other", "namespace": "infra"}],
                              "rules": [{"backendRefs": [{"name": "pay", "port": 8080}]}]}})
    secret = desired("v1", "Secret", "shop-tls", {"type": "kubernetes.io/tls",
                                                  "data": {"tls.key": "c2VjcmV0", "tls.crt": "Y2VydA=="}},
                     annotations={REVISION_ANNOTATION: "3", SERIAL_ANNOTATION: "ab:cd"})
    programmed = {"type": "Programmed", "status": "True", "observedGeneration": 2}
    accepted = [{"type": t, "status": "True", "observedGeneration": 2} for t in ("Accepted", "ResolvedRefs")]
    return [
        (svc, on_member(svc, status={"loadBalancer": {"ingress": [{"ip": "10.0.0.7"}]}},
                        defaults={"spec": {"clusterIP": "10.96.0.12", "sessionAffinity": "None"}})),
        (gw, on_member(gw, status={"observedGeneration": "2", "validationMessages": [
            {"type": {"code": "IST0101"}, "level": "Error", "documentationUrl": "https://istio.io/x"}]})),
        (vs, on_member(vs, status={"observedGeneration": "1", "validationMessages": [{"type": {"code": "IST0104"}}]})),
        (dr, on_member(dr)),
        (api_gw, on_member(api_gw, status={"conditions": [programmed]})),
        (route, on_member(route, status={"parents": [
            {"parentRef": {"name": "shop-api"}, "controllerName": "istio.io/gateway-controller",
             "conditions": accepted}]})),
        (secret, on_member(secret)),
    ]


def readers(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """What every reader of cached member objects makes of them."""
    secrets = [o for o in objects if o["kind"] == "Secret"]
    return {
        "selectors": gateway_selectors(objects),
        "bound": {gw: sorted(v["metadata"]["name"] for v in vss) for gw, vss in bound_virtualservices(objects).items()},
        "hosts": routed_hosts(objects),
        "gateway api": gateway_api_verdict(objects),
        "analyzer": analyzer_messages(objects),
        "vip": _vip(objects),
        "certificate revision": [delivered_revision(s) for s in secrets],
        "serial": [s["metadata"]["annotations"].get(SERIAL_ANNOTATION) for s in secrets],
        "owners": [owner_of(o, HUB) for o in objects],
        "keys": [key_of(o) for o in objects],
        "preconditions": [(o["metadata"]["uid"], o["metadata"]["resourceVersion"]) for o in objects],
        # Read by Istio's verdicts (analyzer messages, Gateway API conditions) only: kept for those kinds.
        "generations": [o["metadata"].get("generation") for o in objects
                        if o["apiVersion"].split("/")[0].endswith(".istio.io")
                        or o["apiVersion"].startswith("gateway.networking.k8s.io/")],
    }


def test_every_reader_answers_the_same_on_compact_records() -> None:
    pairs = bundle()
    whole = [slim(current) for _, current in pairs]
    compacted = [compact(current, verdict(want, current)) for want, current in pairs]
    seen = readers(whole)
    assert seen == readers(compacted)
    # The fixture exercises every reader (a reader answering nothing on both forms proves nothing).
    assert seen["selectors"] == {"istio=ingressgateway"} and seen["vip"] == "10.0.0.7"
    assert seen["bound"] == {("payments", "shop"): ["shop"]}
    assert seen["hosts"] == ["db.data.svc.cluster.local", "pay-canary.payments.svc.cluster.local",
                             "pay.payments.svc.cluster.local"]
    assert seen["gateway api"] is not None and seen["gateway api"].configured is False  # parent "other" unreported
    assert [m.code for m in seen["analyzer"].messages] == ["IST0101"] and seen["analyzer"].stale
    assert seen["certificate revision"] == [3] and seen["serial"] == ["ab:cd"]


def test_a_compact_record_keeps_no_secret_data_nor_foreign_annotations() -> None:
    pairs = bundle()
    for want, current in pairs:
        record = compact(current, verdict(want, current))
        assert record[IN_SYNC] == want["metadata"]["annotations"][HASH_ANNOTATION], key_of(want)
        assert "data" not in record and "managedFields" not in record["metadata"]
        assert "kubectl.kubernetes.io/last-applied-configuration" not in record["metadata"].get("annotations", {})
        assert HASH_ANNOTATION not in record["metadata"].get("annotations", {}), "kept with the verdict"
        assert "creationTimestamp" not in record["metadata"]
    vs_record = compact(pairs[2][1], (OUT_OF_SYNC, None))
    canary = "pay-canary.payments.svc.cluster.local"
    assert vs_record["spec"] == {"gateways": ["shop", "mesh"],
                                 "http": [{"route": [{"destination": {"host": "pay"}},
                                                     {"destination": {"host": canary}}]}],
                                 "tcp": [{"route": [{"destination": {"host": "db.data"}}]}]}


def test_plans_over_compact_records_equal_plans_over_whole_objects() -> None:
    pairs = bundle()
    wanted = [w for w, _ in pairs]
    drifted = copy.deepcopy(pairs[2][1])
    drifted["spec"]["http"][0]["route"][0]["weight"] = 50  # someone edited a field meshfed manages
    foreign = copy.deepcopy(pairs[3][1])
    foreign["spec"]["trafficPolicy"] = {"tls": {"mode": "ISTIO_MUTUAL"}}  # a field meshfed does not manage
    stale = on_member(desired("v1", "Service", "shop-gw", {"spec": {"type": "ClusterIP"}}))  # older revision
    for held in ([c for _, c in pairs], [pairs[0][1], pairs[1][1], drifted, foreign],
                 [stale, pairs[6][1]], []):
        whole = {key_of(o): slim(o) for o in held}
        by_key = {key_of(w): w for w in wanted}
        compacted = {k: compact(o, verdict(by_key[k], o)) for k, o in whole.items()}
        a, b = plan(wanted, whole), plan(wanted, compacted)
        assert (a.create, a.update, a.delete, a.unchanged, a.drifted) == \
            (b.create, b.update, b.delete, b.unchanged, b.drifted)
    assert plan(wanted, {key_of(drifted): compact(drifted, verdict(wanted[2], drifted))}).drifted == \
        [key_of(drifted)]


def test_a_version_is_compared_once_then_the_plan_reads_its_verdict() -> None:
    cache = OwnedCache(HUB)
    want, held = bundle()[2]
    assert cache.put(held) == OWNER.key  # a watch or list: kept whole until the owner's plan
    assert not compared(cache.objects[key_of(want)]) and cache.whole() == 1
    cache.compare(OWNER, [want])
    record = cache.objects[key_of(want)]
    assert record[IN_SYNC] == want["metadata"]["annotations"][HASH_ANNOTATION] and cache.whole() == 0
    assert plan([want], cache.owned(OWNER)).empty
    cache.compare(OWNER, [want])
    assert cache.objects[key_of(want)] is record, "a compared version is not compared again"
    # The member's next version (someone edits a managed field) arrives whole and is compared again.
    edited = copy.deepcopy(held)
    edited["metadata"]["resourceVersion"] = "8"
    edited["spec"]["gateways"] = ["mesh"]
    assert cache.put(edited) == OWNER.key
    cache.compare(OWNER, [want])
    result = plan([want], cache.owned(OWNER))
    assert result.update == [want] and result.drifted == [key_of(want)]
    # The write's answer is compared at once, against what was written.
    answer = copy.deepcopy(held)
    answer["metadata"]["resourceVersion"] = "9"
    cache.put(answer, desired=want)
    assert cache.objects[key_of(want)][IN_SYNC] == want["metadata"]["annotations"][HASH_ANNOTATION]
    assert cache.put(answer) is None, "the watch echo of the write changes nothing"
    assert cache.objects[key_of(want)][IN_SYNC] is not None


def test_the_watch_echo_before_the_answer_is_compacted_by_the_answer() -> None:
    cache = OwnedCache(HUB)
    want, held = bundle()[0]
    cache.put(held)  # the watch was faster than the write's answer
    assert cache.put(held, desired=want) is None
    assert cache.objects[key_of(want)][IN_SYNC] == want["metadata"]["annotations"][HASH_ANNOTATION]


def test_compare_leaves_objects_of_other_owners_alone() -> None:
    cache = OwnedCache(HUB)
    want, held = bundle()[3]
    cache.put(held)
    cache.compare(Owner(HUB, "payments", "other"), [want])
    assert not compared(cache.objects[key_of(want)])


def test_a_compact_record_is_a_third_of_a_whole_one() -> None:
    want, held = bundle()[2]

    def size(make: Any) -> int:
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            kept = [make(copy.deepcopy(held)) for _ in range(200)]
            return (tracemalloc.get_traced_memory()[0] - before) // len(kept)
        finally:
            tracemalloc.stop()

    whole = size(slim)
    compacted = size(lambda o: compact(o, verdict(want, o)))
    # The copies made to measure are freed before the figure is read: only what is kept counts.
    assert compacted * 2 < whole, (compacted, whole)


scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(-3, 3, allow_nan=False),
                    st.sampled_from(["a", "b", "1", ""]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.sampled_from(["x", "y", "z"]), inner,
                                                                       max_size=3)), max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(spec=st.dictionaries(st.sampled_from(["a", "b", "c"]), values, max_size=3), held=values)
def test_the_verdict_kept_is_the_comparison(spec: dict[str, Any], held: Any) -> None:
    want = desired("v1", "ConfigMap", "c", {"spec": spec})
    current = on_member(want)
    current["spec"] = held if isinstance(held, dict) else {"a": held}
    assert up_to_date(want, compact(current, verdict(want, current))) == up_to_date(want, slim(current))


def test_what_records_of_several_members_have_in_common_is_held_once() -> None:
    want, held = bundle()[2]
    records = []
    for member in range(3):
        version = copy.deepcopy(held)
        version["metadata"]["uid"] = f"uid-{member}"
        records.append(compact(version, verdict(want, version)))
    first, *others = records
    for other in others:
        assert other["metadata"]["labels"] is first["metadata"]["labels"]
        assert other[IN_SYNC] is first[IN_SYNC], "the content hash, interned"
        assert other["spec"] is first["spec"] and other["status"] is first["status"]
        assert other["metadata"] is not first["metadata"]
    changed = copy.deepcopy(held)
    changed["status"]["observedGeneration"] = 1  # the number, not the string "1": not the same status
    assert compact(changed, (OUT_OF_SYNC, None))["status"] is not first["status"]
    assert compact(changed, (OUT_OF_SYNC, None))["status"] == {**first["status"], "observedGeneration": 1}
    secrets = [compact(copy.deepcopy(bundle()[6][1]), (OUT_OF_SYNC, None)) for _ in range(2)]
    assert secrets[0]["metadata"]["annotations"] is secrets[1]["metadata"]["annotations"]


def test_empty_parts_of_a_status_are_not_kept() -> None:
    want, held = bundle()[0]
    cluster_ip = copy.deepcopy(held)
    cluster_ip["status"] = {"loadBalancer": {}, "conditions": []}
    record = compact(cluster_ip, verdict(want, cluster_ip))
    assert "status" not in record and _vip([record]) is None
    cluster_ip["status"] = {"loadBalancer": {"ingress": [{"ip": "10.0.0.9", "ports": []}]}}
    kept = compact(cluster_ip, verdict(want, cluster_ip))["status"]
    assert kept == {"loadBalancer": {"ingress": [{"ip": "10.0.0.9"}]}}


def test_the_footprint_counts_what_members_share_once() -> None:
    pairs = bundle()
    caches = [OwnedCache(HUB), OwnedCache(HUB)]
    for member, cache in enumerate(caches):
        for want, held in pairs:
            version = copy.deepcopy(held)
            version["metadata"]["uid"] = f"uid-{member}-{key_of(held).name}-{key_of(held).kind}"
            cache.put(version, desired=want)
    seen: set[int] = set()
    first, second = caches[0].footprint(seen), caches[1].footprint(seen)
    assert first > 0 and 0 < second < first, "the second member's labels, spec and status are the first's"
    alone = caches[1].footprint(set())
    assert alone == first, "both members hold the same records"
    assert deep_size({"a": ["bc", "bc"]}, set()) == \
        sys.getsizeof({"a": []}) + sys.getsizeof("a") + sys.getsizeof(["bc", "bc"]) + sys.getsizeof("bc")
