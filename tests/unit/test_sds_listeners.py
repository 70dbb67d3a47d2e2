"""certs.sds listener configuration and identities (pure parts): a plaintext TCP listener is refused,
`unix:` and mutual-TLS listeners are built, client identities come from verified certificate SANs,
peer uids map to identities, and directory-mode grants parse (or fail naming the file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from certs.sds import (
    ListenerRefused,
    TlsListener,
    UnixListener,
    certificate_identities,
    load_grants,
    parse_listen,
    parse_peer_uid,
)


def test_plaintext_tcp_is_refused_with_the_reason() -> None:
    for address in ("0.0.0.0:15012", "127.0.0.1:15012", "[::]:15012"):
        with pytest.raises(ListenerRefused) as err:
            parse_listen(address)
        assert "refusing plaintext TCP listener" in str(err.value) and "private key" in str(err.value)
    with pytest.raises(ListenerRefused, match="give --client-ca"):
        parse_listen("0.0.0.0:15012", tls_cert=Path("c"), tls_key=Path("k"))
    with pytest.raises(ListenerRefused, match="expected unix:PATH or HOST:PORT"):
        parse_listen("somewhere")


def test_listeners() -> None:
    unix = parse_listen("unix:/run/meshfed/sds.sock", socket_mode=0o600, socket_owner=1337, peer_uids={1337: "gw"})
    assert unix == UnixListener(Path("/run/meshfed/sds.sock"), 0o600, 1337, None, {1337: "gw"})
    assert parse_listen("unix:///run/x.sock") == UnixListener(Path("/run/x.sock"))
    tls = parse_listen("[::]:15012", tls_cert=Path("c"), tls_key=Path("k"), client_ca=Path("ca"))
    assert tls == TlsListener("::", 15012, Path("c"), Path("k"), Path("ca"))
    assert parse_peer_uid("1337=spiffe://meshfed/cluster/east-1") == (1337, "spiffe://meshfed/cluster/east-1")
    for bad in ("1337", "x=y", "1337="):
        with pytest.raises(ListenerRefused, match="expected UID=IDENTITY"):
            parse_peer_uid(bad)


def test_client_identities_spiffe_first_then_dns() -> None:
    cert = {"subjectAltName": (("DNS", "gw.east.example"), ("URI", "spiffe://meshfed/cluster/east-1"),
                               ("URI", "https://not-an-identity"), ("IP Address", "10.0.0.1"))}
    assert certificate_identities(cert) == ("spiffe://meshfed/cluster/east-1", "gw.east.example")
    assert certificate_identities({}) == () and certificate_identities(None) == ()


def test_directory_grants(tmp_path: Path) -> None:
    f = tmp_path / "grants.yaml"
    f.write_text("checkout-tls: [spiffe://meshfed/cluster/east-1]\nadmin-tls: []\n")
    assert load_grants(f, ["checkout-tls=gw-local", "other=x"]) == {
        "checkout-tls": {"spiffe://meshfed/cluster/east-1", "gw-local"}, "admin-tls": frozenset(), "other": {"x"}}
    assert load_grants(None) == {}
    f.write_text("checkout-tls: spiffe://meshfed/cluster/east-1\n")
    with pytest.raises(ValueError, match=r"--grants .*grants.yaml: expected a mapping"):
        load_grants(f)
    with pytest.raises(ValueError, match="expected NAME=IDENTITY"):
        load_grants(None, ["checkout-tls"])


def test_refusals_are_logged_once_per_episode_and_bounded(caplog: pytest.LogCaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    import certs.sds as sds_module

    counted: list[str] = []
    server = sds_module.SdsServer(on_refusal=lambda r: counted.append(r.reason), refusal_ttl=3600)
    caplog.set_level(logging.WARNING, "meshfed.sds")
    for _ in range(3):
        server._refuse("spiffe://x", "ns/a", sds_module.PERMISSION_DENIED, "spiffe://x is not granted ns/a")
    assert len(counted) == 3 and [r.count for r in server.refusals("ns/a")] == [3]
    assert len([m for m in caplog.messages if "refused spiffe://x ns/a" in m]) == 1
    server.refusal_ttl = 0  # the episode ends: a later try is logged again
    assert server.refusals() == []
    server._refuse("spiffe://x", "ns/a", sds_module.PERMISSION_DENIED, "again")
    assert len([m for m in caplog.messages if "refused spiffe://x ns/a" in m]) == 2
    server.refusal_ttl = 3600
    monkeypatch.setattr(sds_module, "MAX_REFUSALS", 5)
    for i in range(20):  # a client asking for made-up names cannot grow the record without bound
        server._refuse("spiffe://x", f"ns/made-up-{i}", sds_module.PERMISSION_DENIED, "no")
    kept = {r.resource for r in server.refusals()}
    assert len(kept) <= 6 and "ns/made-up-19" in kept and "ns/made-up-0" not in kept
