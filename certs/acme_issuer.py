"""The ACME issuer (RFC 8555) on the certbot project's `acme` package, plus challenge solvers.

Owns: account registration (optionally with external account binding), orders, answering HTTP-01
or DNS-01 challenges through a `ChallengeSolver`, finalization, and mapping every failure to an
`IssuanceError` with a clear reason. The `acme` client is synchronous: every call to it runs in a
worker thread (`asyncio.to_thread`), while solvers run on the event loop.

Solvers: `Http01Responder` (a tiny built-in aiohttp server for /.well-known/acme-challenge/),
`Dns01Solver` around a `Dns01Hook` (implemented by the DNS providers in nameservice/providers),
and pebble-challtestsrv adapters for tests. Account keys are JWKs built from PEM and never logged.
Imports acme, josepy, requests (through acme), aiohttp and certs.issuers / certs.checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import aiohttp
import requests
from acme import client, errors, messages
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from josepy import jwa, jwk
from tenacity import retry, retry_if_exception, stop_after_attempt

from certs.checks import disallowed_hosts
from certs.issuers import IssuanceError, IssuedChain, key_to_pem, load_key, new_private_key

log = logging.getLogger("meshfed.acme")


def _bad_nonce(exc: BaseException) -> bool:
    return isinstance(exc, messages.Error) and exc.code == "badNonce"


# The acme client retries a badNonce once per POST; servers may reject nonces at random (Pebble: 5%).
_nonce_retry = retry(retry=retry_if_exception(_bad_nonce), stop=stop_after_attempt(4), reraise=True)


async def _in_thread(fn: Any, *args: Any) -> Any:
    """Run a blocking acme call in a worker thread, retrying it on badNonce."""
    return await asyncio.to_thread(_nonce_retry(fn), *args)


# --- solvers -----------------------------------------------------------------------------------


class ChallengeSolver(Protocol):
    """Makes one ACME challenge answerable. `validation` is the HTTP-01 key authorization or the
    DNS-01 TXT value; `domain` is the identifier without any '*.' prefix."""

    @property
    def challenge_type(self) -> str: ...  # "http-01" | "dns-01"

    async def present(self, domain: str, token: str, validation: str) -> None: ...

    async def cleanup(self, domain: str, token: str, validation: str) -> None: ...


class Dns01Hook(Protocol):
    """What a DNS provider offers DNS-01: publish / remove one TXT value at an absolute name
    (e.g. '_acme-challenge.shop.example.com.'). Other TXT values at that name must be kept (a
    wildcard and its apex share the name). Implementations: nameservice/providers."""

    async def set_txt(self, fqdn: str, value: str, ttl: int) -> None: ...

    async def delete_txt(self, fqdn: str, value: str) -> None: ...


class Dns01Solver:
    challenge_type = "dns-01"

    def __init__(self, hook: Dns01Hook, *, ttl: int = 60, propagation_delay: float = 0.0) -> None:
        self._hook = hook
        self._ttl = ttl
        self._delay = propagation_delay

    @staticmethod
    def record_name(domain: str) -> str:
        return f"_acme-challenge.{domain.rstrip('.')}."

    async def present(self, domain: str, token: str, validation: str) -> None:
        await self._hook.set_txt(self.record_name(domain), validation, self._ttl)
        if self._delay:
            await asyncio.sleep(self._delay)

    async def cleanup(self, domain: str, token: str, validation: str) -> None:
        await self._hook.delete_txt(self.record_name(domain), validation)


class Http01Responder:
    """Built-in HTTP-01 responder: serves GET /.well-known/acme-challenge/<token> on host:port."""

    challenge_type = "http-01"

    def __init__(self, host: str = "0.0.0.0", port: int = 80) -> None:
        self.host, self.port = host, port
        self._tokens: dict[str, str] = {}
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        value = self._tokens.get(request.match_info["token"])
        if value is None:
            return web.Response(status=404)
        return web.Response(text=value, content_type="text/plain")

    async def start(self) -> Http01Responder:
        app = web.Application()
        app.router.add_get("/.well-known/acme-challenge/{token}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def present(self, domain: str, token: str, validation: str) -> None:
        self._tokens[token] = validation

    async def cleanup(self, domain: str, token: str, validation: str) -> None:
        self._tokens.pop(token, None)


class ChallTestSrv:
    """pebble-challtestsrv's management API: HTTP-01 answers (a ChallengeSolver) and, through
    `dns01_hook()`, TXT records (a Dns01Hook). For tests and the local demo only."""

    challenge_type = "http-01"

    def __init__(self, management_url: str) -> None:
        self._url = management_url.rstrip("/")

    async def _post(self, path: str, body: dict[str, Any]) -> None:
        async with aiohttp.ClientSession() as s, s.post(f"{self._url}{path}", json=body) as r:
            r.raise_for_status()

    async def present(self, domain: str, token: str, validation: str) -> None:
        await self._post("/add-http01", {"token": token, "content": validation})

    async def cleanup(self, domain: str, token: str, validation: str) -> None:
        await self._post("/del-http01", {"token": token})

    async def set_txt(self, fqdn: str, value: str, ttl: int) -> None:
        await self._post("/set-txt", {"host": fqdn, "value": value})

    async def delete_txt(self, fqdn: str, value: str) -> None:
        await self._post("/clear-txt", {"host": fqdn})


# --- the issuer --------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class ExternalAccount:
    key_id: str
    hmac_key_b64: str  # base64url, as CAs hand it out
    algorithm: str = "HS256"

    def __repr__(self) -> str:
        return f"ExternalAccount(key_id={self.key_id!r}, hmac=<redacted>)"


def new_account_key_pem() -> bytes:
    """A fresh ECDSA P-256 account key (store it in the account key Secret)."""
    return key_to_pem(new_private_key("ECDSA"))


def _jwk(account_key_pem: bytes) -> tuple[jwk.JWK, Any]:
    key = load_key(account_key_pem)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        alg = {256: jwa.ES256, 384: jwa.ES384}.get(key.curve.key_size)
        if alg is None:
            raise IssuanceError(
                "AccountKeyInvalid", "ACME account keys must be P-256, P-384 or RSA", retryable=False
            )
        return jwk.JWKEC(key=key), alg
    assert isinstance(key, rsa.RSAPrivateKey)
    return jwk.JWKRSA(key=key), jwa.RS256


class _CaBundleFile:
    """A CA bundle where requests (through acme) can read it: `verify` takes a path only. On Linux an
    anonymous in-memory file (memfd), named through /proc/self/fd, gone with the process however it
    ends; elsewhere a temporary file, removed by `close`, when collected, or at exit (a killed process
    leaves it)."""

    def __init__(self, pem: bytes) -> None:
        self._finalizer: weakref.finalize[Any, Any]
        memfd_create = getattr(os, "memfd_create", None)
        if memfd_create is not None:
            fd: int = memfd_create("meshfed-acme-ca", 0)  # not inherited by children (O_CLOEXEC)
            view = memoryview(pem)
            while view:
                view = view[os.write(fd, view):]
            self.path = f"/proc/self/fd/{fd}"
            self._finalizer = weakref.finalize(self, _close_quietly, fd)
        else:
            fd, self.path = tempfile.mkstemp(prefix="meshfed-acme-ca-", suffix=".pem")
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
            self._finalizer = weakref.finalize(self, _unlink_quietly, self.path)

    def close(self) -> None:
        self._finalizer()


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


class AcmeIssuer:
    """An `Issuer` that orders certificates from an ACME CA."""

    def __init__(
        self,
        directory_url: str,
        account_key_pem: bytes,
        solver: ChallengeSolver,
        *,
        name: str = "acme",
        email: str | None = None,
        external_account: ExternalAccount | None = None,
        ca_bundle_pem: bytes | None = None,
        root_pem: bytes = b"",
        allowed_domains: Sequence[str] = (),
        timeout: timedelta = timedelta(seconds=90),
        network_timeout: int = 10,
    ) -> None:
        try:
            self._jwk, self._alg = _jwk(account_key_pem)
        except ValueError as exc:
            raise IssuanceError("AccountKeyInvalid", f"ACME account key: {exc}", retryable=False) from None
        self._url = directory_url
        self._solver = solver
        self._name = name
        self._email = email
        self._eab = external_account
        self._root_pem = root_pem
        self._allowed = tuple(allowed_domains)
        self._timeout = timeout
        self._net_timeout = network_timeout
        self._verify: bool | str = True
        self._bundle: _CaBundleFile | None = None
        if ca_bundle_pem:
            self._bundle = _CaBundleFile(ca_bundle_pem)
            self._verify = self._bundle.path
        self._directory: messages.Directory | None = None
        self._account: messages.RegistrationResource | None = None
        self._account_lock = asyncio.Lock()

    @property
    def name(self) -> str:
        return self._name

    @property
    def account_uri(self) -> str | None:
        return self._account.uri if self._account else None

    def __repr__(self) -> str:
        return f"AcmeIssuer(name={self._name!r}, directory={self._url!r}, account_key=<redacted>)"

    __str__ = __repr__

    def close(self) -> None:
        """Release the CA bundle's file, once nothing uses the issuer any more (else: done when the issuer
        is collected or the process ends; an issuer dropped from a cache is simply let go)."""
        if self._bundle is not None:
            self._bundle.close()

    # -- blocking parts (worker threads) --

    def _client(self) -> client.ClientV2:
        net = client.ClientNetwork(
            self._jwk,
            account=self._account,
            alg=self._alg,
            verify_ssl=self._verify,  # type: ignore[arg-type]
            user_agent="meshfed",
            timeout=self._net_timeout,
        )
        if self._directory is None:
            self._directory = client.ClientV2.get_directory(self._url, net)
        return client.ClientV2(self._directory, net)

    def _register(self) -> messages.RegistrationResource:
        acme = self._client()
        eab = None
        if self._eab is not None:
            eab = messages.ExternalAccountBinding.from_data(
                account_public_key=self._jwk.public_key(),
                kid=self._eab.key_id,
                hmac_key=self._eab.hmac_key_b64,
                directory=acme.directory,
                hmac_alg=self._eab.algorithm,
            )
        elif acme.external_account_required():
            raise IssuanceError(
                "ExternalAccountRequired",
                "the ACME server requires an external account binding",
                retryable=False,
            )
        reg = messages.NewRegistration.from_data(
            email=self._email, terms_of_service_agreed=True, external_account_binding=eab
        )
        try:
            return acme.new_account(reg)
        except errors.ConflictError as exc:  # the key already has an account: use it
            existing = messages.RegistrationResource(uri=exc.location, body=messages.Registration())
            acme.net.account = existing
            return acme.query_registration(existing)

    def _order(self, csr_pem: bytes) -> tuple[client.ClientV2, messages.OrderResource]:
        acme = self._client()
        return acme, acme.new_order(csr_pem)

    # -- async API --

    async def _ensure_account(self) -> None:
        async with self._account_lock:
            if self._account is None:
                self._account = await _in_thread(self._register)
                log.info("acme: account %s at %s", self._account.uri, self._url)

    async def register(self) -> str:
        """Register the account with the ACME server (or find the key's existing account) and return
        its URI. Raises IssuanceError naming what failed: an unreachable directory, a refused external
        account binding, a server that wants one."""
        try:
            await self._ensure_account()
        except IssuanceError:
            raise
        except Exception as exc:
            raise _map_error(exc, self._url) from None
        assert self._account is not None
        return str(self._account.uri)

    async def sign(self, csr_pem: bytes, hosts: Sequence[str], duration: timedelta) -> IssuedChain:
        denied = disallowed_hosts(hosts, self._allowed)
        if denied:
            raise IssuanceError(
                "HostNotAllowed", f"issuer {self._name} may not sign {', '.join(denied)}", retryable=False
            )
        try:
            return await self._sign(csr_pem)
        except IssuanceError:
            raise
        except Exception as exc:
            raise _map_error(exc, self._url) from None

    async def _sign(self, csr_pem: bytes) -> IssuedChain:
        await self._ensure_account()
        acme, order = await _in_thread(self._order, csr_pem)
        presented: list[tuple[str, str, str]] = []
        try:
            answers = []
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue
                domain = authz.body.identifier.value
                challb = next(
                    (c for c in authz.body.challenges if c.chall.typ == self._solver.challenge_type), None
                )
                if challb is None:
                    offered = ", ".join(c.chall.typ for c in authz.body.challenges)
                    raise IssuanceError(
                        "NoSuitableChallenge",
                        f"{domain}: server offers {offered}, solver is {self._solver.challenge_type}",
                        retryable=False,
                    )
                response, validation = challb.response_and_validation(self._jwk)
                token = challb.chall.encode("token")
                await self._solver.present(domain, token, validation)
                presented.append((domain, token, validation))
                answers.append((challb, response))
            for challb, response in answers:
                await _in_thread(acme.answer_challenge, challb, response)
            deadline = datetime.now() + self._timeout
            await _in_thread(_wait_authorizations, acme, order, deadline)
            done: messages.OrderResource = await _in_thread(acme.poll_and_finalize, order, deadline)
        finally:
            for domain, token, validation in presented:
                try:
                    await self._solver.cleanup(domain, token, validation)
                except Exception as exc:  # cleanup failing must not hide the outcome
                    log.warning(
                        "acme: cleanup of %s challenge for %s failed: %s",
                        self._solver.challenge_type,
                        domain,
                        exc,
                    )
        if not done.fullchain_pem:
            raise IssuanceError("AcmeOrderFailed", "the order finished without a certificate")
        return IssuedChain(chain_pem=done.fullchain_pem.encode(), ca_pem=self._root_pem)


def _wait_authorizations(acme: client.ClientV2, order: messages.OrderResource, deadline: datetime) -> None:
    """Poll pending authorizations with a short, growing interval (50 ms .. 1 s) so that
    poll_and_finalize (which sleeps 1 s between polls) finds them decided already."""
    for authzr in order.authorizations:
        delay = 0.05
        while datetime.now() < deadline:
            current, _ = acme.poll(authzr)
            if current.body.status != messages.STATUS_PENDING:
                break
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def _map_error(exc: Exception, url: str) -> IssuanceError:
    if isinstance(exc, requests.exceptions.SSLError):
        return IssuanceError(
            "AcmeUnreachable", f"TLS to {url} failed (is caBundle right?): {type(exc).__name__}"
        )
    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        return IssuanceError("AcmeUnreachable", f"cannot reach {url}: {type(exc).__name__}")
    if isinstance(exc, errors.ValidationError):
        details = "; ".join(
            f"{a.body.identifier.value}: {c.error.detail if c.error else c.status}"
            for a in exc.failed_authzrs
            for c in a.body.challenges
            if c.status == messages.STATUS_INVALID
        )
        return IssuanceError("AcmeChallengeFailed", details or "authorization failed")
    if isinstance(exc, errors.TimeoutError):
        return IssuanceError("AcmeTimeout", "the order did not complete in time")
    if isinstance(exc, errors.IssuanceError):
        return IssuanceError("AcmeOrderFailed", str(exc.error.detail or exc.error.typ))
    if isinstance(exc, messages.Error):
        permanent = exc.typ.rsplit(":", 1)[-1] in {
            "rejectedIdentifier",
            "unsupportedIdentifier",
            "caa",
            "externalAccountRequired",
            "unauthorized",
        }
        return IssuanceError(
            "AcmeRejected", f"{exc.typ.rsplit(':', 1)[-1]}: {exc.detail}", retryable=not permanent
        )
    if isinstance(exc, errors.Error | aiohttp.ClientError):
        return IssuanceError("AcmeError", f"{type(exc).__name__}: {exc}")
    return IssuanceError("AcmeError", f"unexpected {type(exc).__name__}")
