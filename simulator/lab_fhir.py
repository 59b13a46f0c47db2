"""A FHIR R4 server on loopback that stands in for the lab, for the lab-sync tests and benchmark.

It answers transaction Bundles the way a real server (HAPI) does: every resource validated with
fhir.resources (R4B, wire-identical to R4 for the resources the reader sends), conditional creates
resolved by identifier, `urn:uuid:` references rewritten to the stored ids, all or nothing. Tests steer
it to go down, answer slowly, fail on purpose or demand credentials and client certificates.
"""
from __future__ import annotations

import base64
import collections
import copy
import hmac
import itertools
import json
import ssl
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional, Tuple
from urllib.parse import parse_qsl, urlsplit

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

from simulator.lab_peer import LoopbackPeer, TrackedConnections

BASE_PATH = "/fhir"
FHIR_JSON = "application/fhir+json"
ACCEPTED_MEDIA_TYPES = {FHIR_JSON, "application/json"}
PLACEHOLDER_PREFIXES = ("urn:uuid:", "urn:oid:")
IDLE_CONNECTION_TIMEOUT_S = 30.0

Headers = list[tuple[str, str]]
Identifier = Tuple[Optional[str], str]     # (system, or None for any system; value)


class FhirError(Exception):
    """A request the peer refuses: answered with `status` and an OperationOutcome, counted in `stats[stat]`."""

    def __init__(self, status: int, issue_code: str, diagnostics: str, *, stat: str = "invalid",
                 headers: Headers | None = None):
        super().__init__(diagnostics)
        self.status, self.issue_code, self.diagnostics = status, issue_code, diagnostics
        self.stat, self.headers = stat, headers or []

    def outcome(self) -> dict:
        return {"resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": self.issue_code, "diagnostics": self.diagnostics}]}


def invalid(diagnostics: str) -> FhirError:
    return FhirError(400, "invalid", diagnostics)


def not_found(diagnostics: str) -> FhirError:
    return FhirError(404, "not-found", diagnostics, stat="not_found")


class FhirPeer(LoopbackPeer):
    """The lab's FHIR endpoint at `url`, serving from a daemon thread; a context manager."""

    def __init__(self, *, tls: ssl.SSLContext | None = None, token: str | None = None,
                 basic: tuple[str, str] | None = None, port: int = 0):
        super().__init__(port)
        self.tls = tls
        self._credentials: dict[str, str] = {}     # the expected credentials by lower-case auth scheme
        if token:
            self._credentials["bearer"] = token
        if basic:
            self._credentials["basic"] = base64.b64encode(":".join(basic).encode()).decode()
        self.bundles: list[dict] = []    # every JSON body POSTed past auth, as received
        # stats: requests, created, matched, invalid, unauthorized, failed_on_purpose, precondition_failed,
        # not_found, connection_errors (failed handshakes, vanished clients), internal_errors
        self._store: collections.defaultdict[str, list[dict]] = collections.defaultdict(list)
        # (resourceType, identifier value) -> stored resources: conditional creates stay O(1) as the store grows
        self._by_identifier: collections.defaultdict[tuple[str, str], list[dict]] = collections.defaultdict(list)
        self._ids = itertools.count(1)
        self._planned_failures = 0
        self._planned_status = 500
        self._planned_retry_after: float | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}{BASE_PATH}"

    def _make_server(self) -> _PeerServer:
        return _PeerServer(self)

    def fail_next(self, n: int, status: int = 500, retry_after: float | None = None) -> None:
        """The next n transactions that pass auth answer `status` (with `Retry-After` in seconds,
        fractions allowed so tests stay fast) and store nothing."""
        with self._lock:
            self._planned_failures, self._planned_status, self._planned_retry_after = n, status, retry_after

    def resources(self, resource_type: str) -> list[dict]:
        """Stored resources of that type in creation order, as copies."""
        with self._lock:
            return copy.deepcopy(self._store[resource_type])

    def authorize(self, authorization: str | None) -> None:
        """Demand the configured Bearer token or Basic credentials (either, when both are set)."""
        if not self._credentials:
            return
        scheme, _, given = (authorization or "").partition(" ")
        expected = self._credentials.get(scheme.lower())
        if expected is None or not hmac.compare_digest(given.strip().encode(), expected.encode()):
            challenges = [("WWW-Authenticate", f'{known.title()} realm="fhir"') for known in self._credentials]
            raise FhirError(401, "login", "missing or wrong credentials", stat="unauthorized", headers=challenges)

    def capability_statement(self) -> dict:
        return {"resourceType": "CapabilityStatement", "status": "active", "date": _now(), "kind": "instance",
                "fhirVersion": "4.0.1", "format": [FHIR_JSON],
                "implementation": {"description": "stripread loopback lab peer", "url": self.url},
                "rest": [{"mode": "server", "interaction": [{"code": "transaction"}]}]}

    def transaction(self, bundle: Any) -> dict:
        """Record, validate, then resolve and store all or nothing; the transaction-response Bundle."""
        with self._lock:
            self.bundles.append(bundle)
            self._fail_if_planned()
        entries = _validated_entries(bundle)
        with self._lock:
            return self._commit(entries)

    def search(self, resource_type: str, query: str) -> dict:
        """A searchset of the stored resources carrying every `identifier` asked for (all, if none)."""
        _require_known_type(resource_type)
        parameters = parse_qsl(query, keep_blank_values=True)
        if any(name != "identifier" for name, _ in parameters):
            raise invalid("this peer searches by identifier only")
        wanted = [_parse_identifier_token(token) for _, token in parameters]
        with self._lock:
            found = [copy.deepcopy(resource) for resource in self._store[resource_type]
                     if all(_has_identifier(resource, identifier) for identifier in wanted)]
        return _bundle("searchset", [{"fullUrl": f"{self.url}/{resource_type}/{resource['id']}", "resource": resource,
                                      "search": {"mode": "match"}} for resource in found], total=len(found))

    def read(self, resource_type: str, resource_id: str) -> dict:
        _require_known_type(resource_type)
        with self._lock:
            for resource in self._store[resource_type]:
                if resource["id"] == resource_id:
                    return copy.deepcopy(resource)
        raise not_found(f"{resource_type}/{resource_id} is not known")

    def _fail_if_planned(self) -> None:
        if self._planned_failures <= 0:
            return
        self._planned_failures -= 1
        headers = [] if self._planned_retry_after is None else [("Retry-After", f"{self._planned_retry_after:g}")]
        issue_code = "throttled" if self._planned_status == 429 else "transient"
        raise FhirError(self._planned_status, issue_code, "failing on purpose", stat="failed_on_purpose",
                        headers=headers)

    def _commit(self, entries: list[dict]) -> dict:
        """Resolve every conditional create and reference first, then store: a failure stores nothing."""
        now = _now()
        placeholders: dict[str, str] = {}
        created: list[dict] = []
        responses: list[dict] = []
        for entry in entries:
            resource, criteria = entry["resource"], entry["request"].get("ifNoneExist")
            existing = self._conditional_match(resource["resourceType"], criteria, created) if criteria else None
            if existing is None:
                resource["id"] = str(next(self._ids))
                resource["meta"] = {**resource.get("meta", {}), "versionId": "1", "lastUpdated": now}
                created.append(resource)
            target = resource if existing is None else existing
            if "fullUrl" in entry:
                placeholders[entry["fullUrl"]] = f"{target['resourceType']}/{target['id']}"
            responses.append({"response": _response(target, "201 Created" if existing is None else "200 OK")})
        for resource in created:
            _replace_placeholders(resource, placeholders)
        for resource in created:
            self._store[resource["resourceType"]].append(resource)
            for value in {i.get("value") for i in resource.get("identifier", [])}:
                self._by_identifier[resource["resourceType"], value].append(resource)
        self.stats["created"] += len(created)
        self.stats["matched"] += len(entries) - len(created)
        return _bundle("transaction-response", responses)

    def _conditional_match(self, resource_type: str, criteria: str, created: list[dict]) -> dict | None:
        """The one resource, stored or created earlier in this transaction, that `ifNoneExist` finds."""
        identifier = _parse_if_none_exist(criteria)
        candidates = self._by_identifier.get((resource_type, identifier[1]), []) + \
            [r for r in created if r["resourceType"] == resource_type]
        matches = [resource for resource in candidates if _has_identifier(resource, identifier)]
        if len(matches) > 1:
            raise FhirError(412, "multiple-matches", f"ifNoneExist matches {len(matches)} {resource_type} resources",
                            stat="precondition_failed")
        return matches[0] if matches else None


def _validated_entries(bundle: Any) -> list[dict]:
    """The transaction's entries (copies, free to change), after the whole Bundle passed fhir.resources."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise invalid("expected a Bundle resource")   # fhir.resources accepts a Bundle without resourceType
    try:
        model = Bundle.model_validate(bundle)
    except ValidationError as error:
        raise invalid(_describe(error)) from None
    except Exception as error:   # an unknown resourceType inside escapes fhir.resources as a KeyError
        raise invalid(f"not a valid FHIR Bundle: {error!r}") from None
    if model.type != "transaction":
        raise invalid(f"expected a transaction Bundle, got {model.type!r}")   # fhir.resources doesn't check codes
    entries = copy.deepcopy(bundle.get("entry", []))
    full_urls: set[str] = set()
    for position, entry in enumerate(entries):
        where = f"Bundle.entry[{position}]"
        resource, request = entry.get("resource"), entry.get("request")
        if resource is None or request is None:
            raise invalid(f"{where} needs a resource and a request")
        if request["method"] != "POST" or request["url"] != resource["resourceType"]:
            raise invalid(f"{where}: this peer only creates (POST to the resource's type)")
        full_url = entry.get("fullUrl")
        if full_url in full_urls:
            raise invalid(f"{where} repeats fullUrl {full_url}")
        if full_url:
            full_urls.add(full_url)
    return entries


def _describe(error: ValidationError) -> str:
    """Pydantic's errors as FHIRPath-like locations, e.g. `Bundle.entry[0].resource.status: ... required`."""
    def location(parts: tuple) -> str:
        return "Bundle" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in parts)
    return "; ".join(f"{location(detail['loc'])}: {detail['msg']}" for detail in error.errors())


def _parse_if_none_exist(criteria: str) -> Identifier:
    parameters = parse_qsl(criteria, keep_blank_values=True)
    if len(parameters) != 1 or parameters[0][0] != "identifier":
        raise invalid("ifNoneExist: this peer supports identifier=[system|]value only")
    return _parse_identifier_token(parameters[0][1])


def _parse_identifier_token(token: str) -> Identifier:
    system, bar, value = token.partition("|")
    return (system, value) if bar else (None, system)


def _has_identifier(resource: dict, identifier: Identifier) -> bool:
    system, value = identifier
    return any(candidate.get("value") == value and (system is None or candidate.get("system", "") == system)
               for candidate in resource.get("identifier", []))


def _replace_placeholders(node: Any, placeholders: dict[str, str]) -> None:
    """Point every `urn:` reference at the stored resource its entry became, as a real server does."""
    if isinstance(node, list):
        for item in node:
            _replace_placeholders(item, placeholders)
    elif isinstance(node, dict):
        reference = node.get("reference")
        if isinstance(reference, str) and reference.startswith(PLACEHOLDER_PREFIXES):
            if reference not in placeholders:
                raise invalid(f"reference {reference} is no fullUrl of this transaction")
            node["reference"] = placeholders[reference]
        for value in node.values():
            _replace_placeholders(value, placeholders)


def _response(resource: dict, status: str) -> dict:
    version, modified = resource["meta"]["versionId"], resource["meta"]["lastUpdated"]
    return {"status": status, "location": f"{resource['resourceType']}/{resource['id']}/_history/{version}",
            "etag": f'W/"{version}"', "lastModified": modified}


def _bundle(bundle_type: str, entries: list[dict], **fields: Any) -> dict:
    """A Bundle without an empty `entry` list, which FHIR JSON forbids."""
    bundle = {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": bundle_type, **fields}
    return {**bundle, "entry": entries} if entries else bundle


def _require_known_type(resource_type: str) -> None:
    try:
        get_fhir_model_class(resource_type)
    except ValueError:
        raise not_found(f"{resource_type} is not a FHIR resource type") from None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class _PeerServer(TrackedConnections, ThreadingHTTPServer):
    """The listening socket of one up-period of the peer."""

    def __init__(self, peer: FhirPeer):
        super().__init__(peer, ("127.0.0.1", peer.port), _Handler)
        if peer.tls is not None:
            # the handshake happens in the connection's own thread (_Handler.setup), so a slow or
            # failing client cannot stall or kill the accepting thread
            self.socket = peer.tls.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"     # keep-alive, so the reader may reuse its connection
    disable_nagle_algorithm = True    # headers and body go out in two writes: no 40 ms delayed-ACK stall
    timeout = IDLE_CONNECTION_TIMEOUT_S
    server: _PeerServer

    def setup(self) -> None:
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: request lines carry identifiers, and the project keeps patient data out of logs."""

    def do_GET(self) -> None:
        self._answer(self._get)

    def do_POST(self) -> None:
        body = self._read_body()      # read even when refusing, so the connection stays usable
        self._answer(lambda: self._post(body))

    def _get(self) -> dict:
        path, query = self._route()
        if path == ["metadata"]:
            return self.server.peer.capability_statement()
        self.server.peer.authorize(self.headers.get("Authorization"))
        if len(path) == 1:
            return self.server.peer.search(path[0], query)
        if len(path) == 2:
            return self.server.peer.read(*path)
        raise not_found(f"nothing at {BASE_PATH}/{'/'.join(path)}")

    def _post(self, body: bytes) -> dict:
        path, _ = self._route()
        self.server.peer.authorize(self.headers.get("Authorization"))
        if path:
            raise not_found(f"transactions are posted to {BASE_PATH}; this peer offers no other POST")
        media_type = self.headers.get("Content-Type", "").partition(";")[0].strip().lower()
        if media_type not in ACCEPTED_MEDIA_TYPES:
            raise FhirError(415, "not-supported", f"expected {FHIR_JSON}, got {media_type or 'no Content-Type'}")
        try:
            bundle = json.loads(body)
        except ValueError as error:
            raise invalid(f"body is not JSON: {error}") from None
        return self.server.peer.transaction(bundle)

    def _route(self) -> tuple[list[str], str]:
        """The path below the base, split at '/', and the query string."""
        url = urlsplit(self.path)
        if url.path != BASE_PATH and not url.path.startswith(BASE_PATH + "/"):
            raise not_found(f"the FHIR base is {BASE_PATH}")
        return [part for part in url.path[len(BASE_PATH):].split("/") if part], url.query

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):   # trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer(self, action: Callable[[], dict]) -> None:
        peer = self.server.peer
        peer.count("requests")
        status, headers = 200, []
        try:
            document = action()
        except FhirError as error:
            peer.count(error.stat)
            status, headers, document = error.status, error.headers, error.outcome()
        except Exception as error:   # a bug in the peer: say so to the client rather than drop the connection
            peer.count("internal_errors")
            status, document = 500, FhirError(500, "exception", repr(error)).outcome()
        time.sleep(peer._delay_s)
        payload = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", f"{FHIR_JSON}; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)
