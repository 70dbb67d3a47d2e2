"""certs.manager: reconcile (issue / renew / back off), conditions, delivery folding, derivation."""

from __future__ import annotations

import gc
import os
import ssl
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from accesspoint.meta import condition
from certs.acme_issuer import _CaBundleFile
from certs.ca import BACKDATE, InternalCA, generate_ca
from certs.issuers import IssuanceError, IssuedChain, Issuer
from certs.manager import build_issuer, desired_certificate, evaluate, reconcile, with_delivery
from certs.models import (
    Certificate,
    CertificateIssuer,
    CertificateStatus,
    ClusterDelivery,
    EnvoySdsStatus,
    SecretRef,
)
from certs.renewal import jitter_fraction

T0 = datetime(2026, 3, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class Flaky:
    """An issuer failing while `down` is set."""

    def __init__(self, inner: InternalCA) -> None:
        self.inner = inner
        self.down = False
        self.calls = 0

    @property
    def name(self) -> str:
        return "corp"

    async def sign(self, csr_pem: bytes, hosts: Sequence[str], duration: timedelta) -> IssuedChain:
        self.calls += 1
        if self.down:
            raise IssuanceError("AcmeUnreachable", "cannot reach https://ca.example/dir: ConnectionError")
        return await self.inner.sign(csr_pem, hosts, duration)


def cert(hosts: list[str] | None = None, status: CertificateStatus | None = None) -> Certificate:
    return Certificate.model_validate(
        {
            "metadata": {"name": "checkout", "namespace": "payments", "generation": 2},
            "spec": {
                "hosts": hosts or ["shop.example.com"],
                "issuerRef": {"name": "corp"},
                "duration": "720h",
            },
            "status": status.wire() if status else None,
        }
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def issuer(clock: Clock) -> Flaky:
    return Flaky(InternalCA(*generate_ca(now=T0 - timedelta(days=1)), name="corp", clock=clock))


async def test_issue_then_wait_then_renew(clock: Clock, issuer: Flaky) -> None:
    out = await reconcile(cert(), issuer, now=T0)
    assert out.bundle is not None and out.decision.reason == "Initial"
    st = out.status
    assert st.revision == 1 and st.serial == out.bundle.serial_hex and st.hosts == ["shop.example.com"]
    assert st.observed_generation == 2
    assert condition(st.conditions, "Issued").status == "True"  # type: ignore[union-attr]
    assert condition(st.conditions, "Delivered").reason == "NoTargets"  # type: ignore[union-attr]
    assert st.ready == "False" and st.summary == "rev 1, 30d"
    # renewal at 2/3 of the lifetime, minus up to 10 % of renewBefore picked by the serial; the
    # lifetime is 30 days plus the 5-minute backdate, so renewBefore is 10 days and 100 seconds
    renew = datetime.fromisoformat(st.renewal_time.replace("Z", "+00:00"))  # type: ignore[union-attr]
    not_after = T0 + timedelta(days=30)
    before = (not_after - (T0 - BACKDATE)) / 3
    assert out.bundle.not_after == not_after
    assert not_after - before * 1.1 - timedelta(seconds=1) <= renew <= not_after - before
    expected = not_after - before - before * (0.1 * jitter_fraction(st.serial))
    assert abs(renew - expected) < timedelta(seconds=1)
    assert out.requeue_at.replace(microsecond=0) == renew

    # nothing due: no issuance, same revision
    again = await reconcile(cert(status=st), issuer, now=T0 + timedelta(days=1))
    assert again.bundle is None and again.decision.reason == "UpToDate" and issuer.calls == 1
    assert again.status.revision == 1

    # due: renewed with a new key, new revision
    clock.now = renew
    renewed = await reconcile(cert(status=st), issuer, now=renew)
    assert renewed.decision.reason == "Renewal" and renewed.bundle is not None
    assert renewed.status.revision == 2 and renewed.status.serial != st.serial
    assert renewed.bundle.key_pem != out.bundle.key_pem


async def test_failures_back_off_and_keep_the_current_cert(clock: Clock, issuer: Flaky) -> None:
    first = await reconcile(cert(), issuer, now=T0)
    issuer.down = True
    now = T0 + timedelta(days=25)  # past renewal time
    clock.now = now
    failed = await reconcile(cert(status=first.status), issuer, now=now)
    st = failed.status
    assert (
        failed.bundle is None and st.failures == 1 and st.serial == first.status.serial and st.revision == 1
    )
    assert st.last_failure is not None and st.last_failure.reason == "AcmeUnreachable"
    issued = condition(st.conditions, "Issued")
    assert issued is not None and issued.status == "True" and issued.reason == "RenewalFailing"
    assert failed.requeue_at == now + timedelta(seconds=10)
    # within the backoff: not even tried
    waiting = await reconcile(cert(status=st), issuer, now=now + timedelta(seconds=5))
    assert waiting.decision.reason == "Backoff" and issuer.calls == 2
    # second failure doubles the delay
    second = await reconcile(cert(status=st), issuer, now=now + timedelta(seconds=10))
    assert second.status.failures == 2 and second.requeue_at == now + timedelta(seconds=30)
    # recovery clears the failure
    issuer.down = False
    ok = await reconcile(cert(status=second.status), issuer, now=now + timedelta(seconds=30))
    assert ok.bundle is not None and ok.status.failures == 0 and ok.status.last_failure is None
    assert ok.status.revision == 2 and condition(ok.status.conditions, "Issued").reason == "Issued"  # type: ignore[union-attr]


async def test_build_issuer_error_is_a_condition(issuer: Flaky) -> None:
    err = IssuanceError("CASecretMissing", "the CA Secret does not exist")
    out = await reconcile(cert(), err, now=T0)
    issued = condition(out.status.conditions, "Issued")
    assert issued is not None and (issued.status, issued.reason) == ("False", "CASecretMissing")
    assert out.status.ready == "False" and out.status.serial is None


async def test_host_not_allowed(clock: Clock) -> None:
    ca = InternalCA(
        *generate_ca(now=T0 - timedelta(days=1)), name="corp", allowed_domains=["*.corp.test"], clock=clock
    )
    out = await reconcile(cert(["shop.example.com"]), ca, now=T0)
    issued = condition(out.status.conditions, "Issued")
    assert issued is not None and issued.reason == "HostNotAllowed" and "shop.example.com" in issued.message


async def test_hosts_change_reissues(issuer: Flaky) -> None:
    first = await reconcile(cert(), issuer, now=T0)
    out = await reconcile(
        cert(["shop.example.com", "api.example.com"], first.status), issuer, now=T0 + timedelta(hours=1)
    )
    assert out.decision.reason == "HostsChanged" and out.status.revision == 2
    assert out.status.hosts == ["shop.example.com", "api.example.com"]


async def test_delivery_conditions(issuer: Flaky) -> None:
    st = (await reconcile(cert(), issuer, now=T0)).status
    serial = st.serial or ""
    now = T0 + timedelta(minutes=1)

    def delivered(**kw: object) -> tuple[str, str, str | None]:
        s = with_delivery(st, now=now, **kw)  # type: ignore[arg-type]
        c = condition(s.conditions, "Delivered")
        assert c is not None
        return c.status, c.reason, s.ready

    assert delivered(
        clusters=[ClusterDelivery(name="a", revision=1), ClusterDelivery(name="b", revision=1)]
    ) == ("True", "Delivered", "True")
    assert delivered(clusters=[ClusterDelivery(name="a", revision=1), ClusterDelivery(name="b", revision=0)])[
        :2
    ] == ("False", "Delivering")
    assert delivered(clusters=[ClusterDelivery(name="a", revision=1), ClusterDelivery(name="b")])[:2] == (
        "Unknown",
        "Unknown",
    )
    assert delivered(
        clusters=[
            ClusterDelivery(name="a", revision=1),
            ClusterDelivery(name="b", revision=0, last_error="secrets is forbidden"),
        ]
    )[:2] == ("False", "DeliveryFailed")
    # A member refusing the new revision keeps the old one: counted once, as failed, with its message.
    s = with_delivery(st, now=now, clusters=[
        ClusterDelivery(name="a", revision=1), ClusterDelivery(name="b", revision=1),
        ClusterDelivery(name="c", revision=0, last_error="secrets is forbidden")])
    c = condition(s.conditions, "Delivered")
    assert c is not None and c.message == "2/3 at revision 1; c: secrets is forbidden"
    good = EnvoySdsStatus(node="gw-1", resource="checkout-tls", acked_version=f"4-{serial[:16]}")
    old = EnvoySdsStatus(node="gw-2", resource="checkout-tls", acked_version="3-abc")
    nack = EnvoySdsStatus(
        node="gw-3",
        resource="checkout-tls",
        acked_version="3-abc",
        nack_version=f"4-{serial[:16]}",
        nack_message="KEY_VALUES_MISMATCH",
    )
    assert delivered(envoys=[good]) == ("True", "Delivered", "True")
    assert delivered(envoys=[good, old])[:2] == ("False", "Delivering")
    s = with_delivery(st, envoys=[good, nack], now=now)
    c = condition(s.conditions, "Delivered")
    assert c is not None and c.reason == "DeliveryFailed" and "KEY_VALUES_MISMATCH" in c.message
    assert [e.node for e in s.envoys] == ["gw-1", "gw-3"]


def test_evaluate_expired_and_summary() -> None:
    st = CertificateStatus(
        revision=3,
        serial="ab",
        hosts=["a"],
        issuer="corp",
        not_before="2026-01-01T00:00:00Z",
        not_after="2026-05-01T00:00:00Z",
    )
    assert evaluate(st, datetime(2026, 3, 1, tzinfo=UTC)).summary == "rev 3, 61d"
    assert evaluate(st, datetime(2026, 4, 30, 19, tzinfo=UTC)).summary == "rev 3, 5h"
    late = evaluate(st, datetime(2026, 5, 2, tzinfo=UTC))
    assert late.summary == "rev 3, expired" and late.ready == "False"
    assert condition(late.conditions, "Issued").reason == "Expired"  # type: ignore[union-attr]
    # transition times are kept while the status does not flip
    t1 = evaluate(st, datetime(2026, 2, 1, tzinfo=UTC))
    t2 = evaluate(t1, datetime(2026, 2, 2, tzinfo=UTC))
    assert [c.last_transition_time for c in t1.conditions] == [c.last_transition_time for c in t2.conditions]


def test_desired_certificate_from_gateways() -> None:
    gw = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "gw"},
        "spec": {
            "servers": [
                {
                    "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
                    "hosts": ["payments/shop.example.com", "api.example.com"],
                    "tls": {"mode": "SIMPLE"},
                }
            ]
        },
    }
    c = desired_certificate(
        "checkout", "payments", [gw], "corp", labels={"meshfed.io/accesspoint": "checkout"}
    )
    assert c is not None
    assert c.spec.hosts == ["api.example.com", "shop.example.com"]
    assert c.spec.access_point_ref is not None and c.spec.access_point_ref.name == "checkout"
    assert c.secret_name == "checkout-tls"
    assert desired_certificate("x", "y", [{"kind": "Service", "apiVersion": "v1"}], "corp") is None


class Stamping:
    """An issuer that does not backdate: notBefore is its own clock at issue (as Pebble does),
    `ahead` in front of ours, and issuing takes `takes` of the manager's monotonic time."""

    def __init__(self, ahead: timedelta, takes: float, monotonic: list[float]) -> None:
        self.ahead = ahead
        self.takes = takes
        self.monotonic = monotonic
        self.inner = InternalCA(
            *generate_ca(now=T0 - timedelta(days=1)), name="corp", clock=lambda: T0 + ahead + BACKDATE
        )

    @property
    def name(self) -> str:
        return "corp"

    async def sign(self, csr_pem: bytes, hosts: Sequence[str], duration: timedelta) -> IssuedChain:
        self.monotonic[0] += self.takes
        return await self.inner.sign(csr_pem, hosts, duration)


@pytest.mark.parametrize(
    ("ahead", "takes", "issued"),
    [
        (timedelta(0), 0.0, True),
        (timedelta(seconds=1), 0.0, True),  # the CI failure: Pebble's notBefore 1 s after `now`
        (timedelta(seconds=50), 0.0, True),  # within ISSUER_CLOCK_SKEW
        (timedelta(minutes=5), 0.0, False),  # a CA clock far ahead: not yet valid
        (timedelta(minutes=5), 300.0, True),  # ... unless issuing took that long (DNS-01 waits)
    ],
)
async def test_fresh_certificate_checked_as_of_its_arrival(
    monkeypatch: pytest.MonkeyPatch, ahead: timedelta, takes: float, issued: bool
) -> None:
    monotonic = [1000.0]
    monkeypatch.setattr("certs.manager.monotonic", lambda: monotonic[0])
    out = await reconcile(cert(), Stamping(ahead, takes, monotonic), now=T0)
    if issued:
        assert out.status.last_failure is None, out.status.last_failure
        assert out.bundle is not None
    else:
        assert out.bundle is None
        assert out.status.last_failure is not None
        assert out.status.last_failure.reason == "IssuedCertificateInvalid"
        assert "NotYetValid" in out.status.last_failure.message


async def test_a_new_generation_of_an_issuer_replaces_the_cached_one() -> None:
    """The cache keeps one issuer per CertificateIssuer: an edited one (a new generation) is built
    again and the older generations are let go (each ACME issuer holds a CA bundle file)."""
    ca_pem, key_pem = generate_ca(now=T0 - timedelta(days=1))

    async def read_secret(ref: SecretRef) -> dict[str, bytes]:
        return {"tls.crt": ca_pem, "tls.key": key_pem}

    def resource(generation: int, name: str = "corp") -> CertificateIssuer:
        return CertificateIssuer.model_validate({
            "apiVersion": "meshfed.io/v1alpha1", "kind": "CertificateIssuer",
            "metadata": {"name": name, "generation": generation},
            "spec": {"ca": {"secretRef": {"name": "corp-ca"}}}})

    cache: dict[str, Issuer] = {}
    first = await build_issuer(resource(1), read_secret, cache=cache)
    assert await build_issuer(resource(1), read_secret, cache=cache) is first
    other = await build_issuer(resource(1, "other"), read_secret, cache=cache)
    second = await build_issuer(resource(2), read_secret, cache=cache)
    assert second is not first and cache == {"corp@2": second, "other@1": other}


def test_the_acme_ca_bundle_leaves_no_file_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """requests takes the ACME server's CA bundle as a path: on Linux an in-memory file read through
    /proc/self/fd (nothing in the temporary directory, gone with the process even when killed), closed
    when the issuer goes; elsewhere a temporary file, removed then."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ca_pem, _ = generate_ca(now=T0 - timedelta(days=1))
    bundle = _CaBundleFile(ca_pem)
    assert list(tmp_path.iterdir()) == [] and bundle.path.startswith("/proc/self/fd/")
    for _ in range(2):  # read whole each time (a new open file, not a shared offset)
        assert len(ssl.create_default_context(cafile=bundle.path).get_ca_certs()) == 1
    fd = int(bundle.path.rsplit("/", 1)[1])
    del bundle
    gc.collect()
    with pytest.raises(OSError):
        os.fstat(fd)
    # Without memfd: a temporary file, removed by close().
    monkeypatch.delattr(os, "memfd_create")
    bundle = _CaBundleFile(ca_pem)
    assert [p.name for p in tmp_path.iterdir()] == [Path(bundle.path).name]
    assert len(ssl.create_default_context(cafile=bundle.path).get_ca_certs()) == 1
    bundle.close()
    assert list(tmp_path.iterdir()) == []
