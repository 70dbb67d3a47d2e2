"""fleet.istio.unsynced_informers: the informers istiod's log says it still waits for (pure)."""

from __future__ import annotations

from fleet.istio import unsynced_informers

# Lines as istiod writes them (a CI run's log, 2026-12-07: the GatewayClass informers never synced).
LOG = """\
2026-12-07T12:55:05.248530Z\tinfo\tgatewayclasses.gateway.networking.k8s.io is now ready, building client
2026-12-07T12:55:05.301000Z\tinfo\twaiting for sync...\tname=crdclient/informer/Gateway attempt=5 time=4.5s
2026-12-07T12:55:05.331000Z\tinfo\tsync complete\tname=crdclient/informer/Gateway attempt=8 time=4.5s
2026-12-07T12:55:09.632385Z\tinfo\twaiting for sync...\tname=crdclient/informer/GatewayClass attempt=50 time=4.5s
2026-12-07T12:55:09.632584Z\tinfo\twaiting for sync...\tname=gateway/informer/GatewayClasses attempt=50 time=4.5s
2026-12-07T12:55:14.662587Z\tinfo\twaiting for sync...\tname=gateway/informer/GatewayClasses attempt=100 time=4.5s
2026-12-07T12:55:14.662853Z\tinfo\twaiting for sync...\tname=crdclient/informer/GatewayClass attempt=100 time=4.5s
2026-12-07T12:55:15.000000Z\tinfo\twaiting for sync...\tname=crdclient attempt=100 time=4.5s
2026-12-07T12:57:02.276272Z\tinfo\tkube\tcontroller "gateway.networking.k8s.io/v1/GatewayClass" is syncing...
"""


def test_the_informers_named_as_waiting_and_never_as_synced_in_the_order_first_named() -> None:
    assert unsynced_informers(LOG) == ["crdclient/informer/GatewayClass", "gateway/informer/GatewayClasses",
                                       "crdclient"]


def test_an_informer_that_synced_after_waiting_is_not_named() -> None:
    synced = LOG + "2026-12-07T12:55:20.0Z\tinfo\tsync complete\tname=crdclient/informer/GatewayClass attempt=9\n"
    assert unsynced_informers(synced) == ["gateway/informer/GatewayClasses", "crdclient"]
    assert unsynced_informers("") == []
