"""Lab sync: drains the result store's outbox to the lab's FHIR server and/or HL7 MLLP listener.

Results go in the order they were taken. A result is marked sent only after every configured
destination acknowledged it; a crash between a lab's acknowledgement and that mark is resolved by
the resend, which the lab recognises (FHIR conditional create, HL7 control id), so nothing is lost
or duplicated. While the lab is unreachable the pass stops at the first result that did not get
through and the next pass waits with exponential backoff and jitter; a result the lab rejects is
set aside as `failed` for a person to see, and the others carry on; a lab that refuses the reader
itself (credentials, certificate) stops syncing until the configuration is fixed, instead of
retrying into a wall. Log lines name records by sequence number, never by patient, and never quote
the lab's answer (it may echo patient data); that detail is kept in the store.
"""
from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from device.lab.config import LabConfig, LabRefusedReader, LabRejected, LabUnavailable
from device.runtime.session import Clock
from device.store.results import ResultStore, StoredResult

log = logging.getLogger("stripread.sync")
BATCH = 100


def destinations(config: LabConfig) -> list:
    """The configured transports; their formats' libraries are imported only when used."""
    found = []
    if config.fhir:
        from device.lab.fhir import FhirDestination
        found.append(FhirDestination(config.fhir, config))
    if config.hl7:
        from device.lab.hl7 import MllpDestination
        found.append(MllpDestination(config.hl7, config))
    return found


@dataclass
class SyncSummary:
    sent: int = 0
    failed: int = 0
    alerts_sent: int = 0
    waiting: str | None = None            # why the pass stopped early (the lab is down, refused the reader)
    retry_after: float | None = None      # what the lab asked for, if it did
    refused: bool = False                 # the lab refused the reader: needs a person, not a retry
    failures: list[tuple[int, str]] = field(default_factory=list)   # (seq, reason) rejected in this pass


class Backoff:
    """Exponential backoff with jitter: the n-th wait is drawn from [d/2, d], d = initial * 2^n
    capped, so readers that lost the lab together do not return together."""

    def __init__(self, initial_s: float, max_s: float, rng: random.Random | None = None):
        self.initial_s, self.max_s = initial_s, max_s
        self.rng = rng or random.Random()
        self.failures = 0

    def next(self, at_least: float | None = None) -> float:
        ceiling = min(self.max_s, self.initial_s * 2 ** self.failures)
        self.failures += 1
        return max(self.rng.uniform(ceiling / 2, ceiling), min(at_least or 0.0, self.max_s))

    def reset(self) -> None:
        self.failures = 0


class Syncer:
    """Sends pending results to every destination; one pass (`sync_once`) or until stopped (`run`)."""

    def __init__(self, store: ResultStore, sinks: list, config: LabConfig, clock: Clock | None = None,
                 rng: random.Random | None = None):
        self.store, self.sinks, self.config = store, sinks, config
        self.clock = clock or Clock()
        self.backoff = Backoff(config.backoff_initial_s, config.backoff_max_s, rng)

    def sync_once(self, on_progress: Callable[[int, int], None] | None = None,
                  stop: threading.Event | None = None) -> SyncSummary:
        """Oldest pending result first, then the alerts raised on them, until none is left, the lab
        cannot take more now, or `stop`."""
        summary, after, total = SyncSummary(), 0, self.store.outbox_counts()["pending"]
        while batch := self.store.pending(after, BATCH):
            for record in batch:
                after = record.seq
                if (stop and stop.is_set()) or not self._deliver(record, summary):
                    return summary
                if on_progress:
                    on_progress(summary.sent + summary.failed, total)
        for alert in self.store.pending_alerts():
            if (stop and stop.is_set()) or not self._deliver_alert(alert, summary):
                return summary
        return summary

    def _deliver(self, record: StoredResult, summary: SyncSummary) -> bool:
        """True to go on with the next result."""
        done = self.store.deliveries(record.result_id)
        for sink in self.sinks:
            if sink.name in done:
                continue      # acknowledged before a crash or by a pass that stopped at another lab
            outcome, answer = self._attempt(sink, lambda: sink.send(record), "result", record.seq, summary)
            if outcome != "ok":
                if answer is not None:
                    self.store.record_attempt(record.result_id, answer, permanent=outcome == "rejected")
                return outcome == "rejected"
            done[sink.name] = answer
            self.store.record_delivery(record.result_id, sink.name, answer,
                                       complete=all(s.name in done for s in self.sinks))
        summary.sent += 1
        return True

    def _deliver_alert(self, alert: dict, summary: SyncSummary) -> bool:
        """An alert to every destination (a resend to one that has it is recognised there)."""
        for sink in self.sinks:
            outcome, answer = self._attempt(sink, lambda: sink.send_alert(alert), "alert", alert["seq"], summary)
            if outcome != "ok":
                if answer is not None:
                    self.store.record_alert_delivery(alert["id"], answer, permanent=outcome == "rejected")
                return outcome == "rejected"
        self.store.record_alert_delivery(alert["id"])
        summary.alerts_sent += 1
        return True

    @staticmethod
    def _attempt(sink, send, what: str, seq: int, summary: SyncSummary) -> tuple[str, str | None]:
        """One send: ("ok", the lab's reference), ("rejected" | "waiting", what to keep of the
        lab's answer), or ("refused", None) when the lab refuses the reader itself."""
        try:
            return "ok", send()
        except LabRejected as exc:
            summary.failed += 1
            summary.failures.append((seq, f"{sink.name}: {exc}"))
            log.warning(f"lab rejected a {what}", extra={"fields": {"record": seq, "destination": sink.name,
                                                                   "reason": str(exc)}})
            return "rejected", f"{sink.name}: {exc}: {exc.detail}"
        except LabUnavailable as exc:
            summary.waiting, summary.retry_after = f"{sink.name}: {exc}", exc.retry_after
            log.info("lab unavailable", extra={"fields": {"record": seq, "destination": sink.name, "reason": str(exc)}})
            return "waiting", f"{sink.name}: {exc}: {exc.detail}"
        except LabRefusedReader as exc:
            summary.waiting, summary.refused = f"{sink.name}: {exc}", True
            log.error("lab refused the reader", extra={"fields": {"destination": sink.name, "reason": str(exc)}})
            return "refused", None

    def run(self, stop: threading.Event, wake: threading.Event | None = None) -> None:
        """Passes until `stop`: right away when `wake` is set (a new result), every `interval_s`
        otherwise, later and later while the lab is down, rarely while it refuses the reader."""
        wake = wake or threading.Event()
        while not stop.is_set():
            wake.clear()
            try:
                summary = self.sync_once(stop=stop)
            except Exception:     # a bug must not end syncing for the life of the service
                log.exception("sync pass failed")
                summary = SyncSummary(waiting="internal error")
            if summary.refused:
                delay = self.config.backoff_max_s
            elif summary.waiting:
                delay = self.backoff.next(summary.retry_after)
            else:
                self.backoff.reset()
                delay = self.config.interval_s
            self._wait(delay, stop, wake, interruptible=not summary.waiting)

    def _wait(self, seconds: float, stop: threading.Event, wake: threading.Event, interruptible: bool) -> None:
        """Sleep on the clock; a new result cuts a normal wait short, not a backoff."""
        deadline = self.clock.now() + seconds
        while not stop.is_set() and (remaining := deadline - self.clock.now()) > 0:
            if interruptible and wake.is_set():
                return
            (wake if interruptible else stop).wait(min(remaining / self.clock.speed, 0.5))

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
