"""The checker: pure functions from a recorded `History` to the anomalies in it.

Each command's body carries a tag (a create's label `chaos`, a status's `status_message`,
a ping's `message`, a cancel's `reason`), so an effect in the log names the command it
came from. The checker never predicts what the rules should have answered: it holds each
reply to the log (a SUCCESS is in it once, a refusal is not), and the log and every
subscriber's notifications to the contract's invariants.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from statusek.settings import Settings
from statusek.worker.relay import nack_delay
from tests.chaos.history import EventRow, History, Note, Sent
from tests.chaos.schedule import FAULTS, PATIENT

# The anomaly kinds, in the order tables print them.
KINDS = (
    "effect_lost",  # a SUCCESS reply whose effect is not in the log
    "applied_twice",  # one command's effect in the log more than once
    "reply_lies",  # SUCCESS for a command not applied (another's reply), or a refusal/EXPIRED applied
    "no_reply",  # a client that waited the whole run heard nothing
    "order_regressed",  # a subscriber got an older notification of an instance, first time, after a newer one
    "replayed_after_newer",  # ... or a copy of an older one it already had (a run re-sent: 5, 6, 5, 6)
    "occurred_at_backwards",  # occurred_at decreases while seq increases (log or subscriber)
    "finish_reasons_differ",  # a finish announced twice with different reasons
    "finished_twice",  # two finished events for one instance in the log
    "event_after_finish",  # an event after the instance's finished event
    "seq_gap",  # an instance's seqs are not 1, 2, 3 ...
    "notification_lost",  # a status or finished event some subscriber never received
    "notification_flood",  # a healthy subscriber got more copies of one notification than `flood_limit`
)
FLOOD = 3  # "healthy subscribers see at most a few copies" (issue 17, item 5)
NOTIFIED = ("status", "finished")
# Faults that can cut a worker off between publishing a notification and recording that it did:
# the outbox then still holds it, and it is sent again (at least once, same message_id), after
# newer ones of its instance if those went out meanwhile. A re-sent run is an anomaly without them.
CUT_OFF = frozenset({"sigkill", "sigstop", "pg_blackhole", "pg_restart", "broker_cut", "broker_blackhole"})
# A notification a queue refused is sent again no sooner than this (the relay's grace for a
# refused direct publish, `STATUSEK_OUTBOX_GRACE`'s default), then after `nack_delay(1)`, ...
FIRST_RESEND = float(Settings.model_fields["outbox_grace"].default)


def flood_limit(full_for: float | None) -> int:
    """Copies of one notification a healthy subscriber may get when a queue refused for `full_for` s.

    The relay's documented schedule (docs/guarantees.md): the first send, every re-send made while
    the queue refused, and the one that got through.
    """
    if full_for is None:
        return FLOOD
    copies, at, nacks = 2, FIRST_RESEND, 1
    while at < full_for:
        copies += 1
        at += nack_delay(nacks)
        nacks += 1
    return max(FLOOD, copies)


@dataclass(frozen=True)
class Anomaly:
    kind: str
    detail: str


@dataclass
class Verdict:
    seed: int
    faults: list[str]
    anomalies: list[Anomaly] = field(default_factory=list)
    expected: Counter[str] = field(default_factory=Counter)  # outcomes that are allowed, counted

    def counts(self) -> Counter[str]:
        return Counter(a.kind for a in self.anomalies)


def effects(history: History) -> Counter[str]:
    """Tag -> how many times its effect is in the log (a create counts its instances)."""
    found: Counter[str] = Counter(tag for tag in history.created_tags.values() if tag)
    for e in history.events:
        tagged = e.kind in ("status", "ping") or (e.kind == "finished" and e.reason == "CANCELLED")
        if tagged and e.message:
            found[e.message] += 1
    return found


def check(history: History, *, strict_timeouts: bool = False, flood: int | None = None) -> Verdict:
    """Every anomaly in `history`.

    A client that timed out may or may not see its command applied: until commands carry a
    deadline the worker honours, "no answer but applied" is counted under `expected`; with
    `strict_timeouts` it is a lie like any other. A healthy subscriber may get each notification
    up to `flood` times (default: `flood_limit` of how long a queue refused). A re-sent run after
    a fault in `CUT_OFF` is counted under `expected` as `repeat_after_cut_off`.
    """
    verdict = Verdict(history.seed, list(history.faults))
    verdict.anomalies += check_replies(history, strict_timeouts, verdict.expected)
    verdict.anomalies += check_log(history.events)
    limit = flood if flood is not None else flood_limit(history.full_for)
    for name, notes in history.notes.items():
        verdict.anomalies += check_subscriber(name, notes, healthy=name in history.healthy, flood=limit)
    verdict.anomalies += check_delivery(history)
    if CUT_OFF & set(history.faults):
        repeats = [a for a in verdict.anomalies if a.kind == "replayed_after_newer"]
        verdict.anomalies = [a for a in verdict.anomalies if a.kind != "replayed_after_newer"]
        verdict.expected["repeat_after_cut_off"] += len(repeats)
    return verdict


def check_replies(history: History, strict_timeouts: bool, expected: Counter[str]) -> list[Anomaly]:
    found = effects(history)
    out = []
    seen: set[str] = set()
    for c in history.commands:
        applied = found[c.tag]
        what = f"#{c.index} {c.routing_key} tag={c.tag} message_id={c.message_id} token={c.token}"
        if applied > 1 and c.tag not in seen:
            out.append(Anomaly("applied_twice", f"{what}: applied {applied} times"))
        seen.add(c.tag)
        if c.code is None:
            if c.patience < PATIENT:
                outcome = "timed_out_applied" if applied else "timed_out_not_applied"
                expected[outcome] += 1
                if applied and strict_timeouts and c.late_code != "SUCCESS":
                    out.append(Anomaly("reply_lies", f"{what}: no answer in {c.patience}s, applied"))
            else:
                out.append(Anomaly("no_reply", f"{what}: no reply (applied {applied})"))
            continue
        if c.code == "SUCCESS":
            if not applied:
                kind = "reply_lies" if c.reuses_id else "effect_lost"
                out.append(Anomaly(kind, f"{what}: SUCCESS, not in the log"))
        elif applied and not _applied_by_twin(history, c):
            out.append(Anomaly("reply_lies", f"{what}: {c.code}, applied"))
        if c.reuses_id:
            expected[f"reused_id_{c.code}"] += 1
    return out


def _applied_by_twin(history: History, refused: Sent) -> bool:
    """A refusal whose tag another publish of the same body applied (a re-publish, say)."""
    return any(c is not refused and c.tag == refused.tag and c.code == "SUCCESS" for c in history.commands)


def check_log(events: Iterable[EventRow]) -> list[Anomaly]:
    by_token: dict[str, list[EventRow]] = defaultdict(list)
    for e in events:
        by_token[e.token].append(e)
    out = []
    for token, rows in by_token.items():
        rows.sort(key=lambda e: e.seq)
        seqs = [e.seq for e in rows]
        if seqs != list(range(1, len(rows) + 1)):
            out.append(Anomaly("seq_gap", f"{token}: seqs {seqs}"))
        for a, b in itertools.pairwise(rows):
            if b.occurred_at < a.occurred_at:
                out.append(Anomaly("occurred_at_backwards", f"{token}: log seq {a.seq} -> {b.seq}"))
        finishes = [e for e in rows if e.kind == "finished"]
        if len({e.reason for e in finishes}) > 1:
            reasons = [e.reason for e in finishes]
            out.append(Anomaly("finish_reasons_differ", f"{token}: log reasons {reasons}"))
        if len(finishes) > 1:
            out.append(Anomaly("finished_twice", f"{token}: {len(finishes)} finished events"))
        # A second finish is `finished_twice`; anything else after the first is a rule broken.
        after = [e.kind for e in rows if finishes and e.seq > finishes[0].seq and e.kind != "finished"]
        if after:
            out.append(Anomaly("event_after_finish", f"{token}: {after} after seq {finishes[0].seq}"))
    return out


def check_subscriber(name: str, notes: list[Note], *, healthy: bool, flood: int = FLOOD) -> list[Anomaly]:
    by_token: dict[str, list[Note]] = defaultdict(list)
    for n in notes:
        by_token[n.token].append(n)
    out = []
    for token, arrived in by_token.items():
        newest: Note | None = None
        regressed = False
        delivered: set[int] = set()
        for n in arrived:
            if newest is not None and n.seq < newest.seq and not regressed:
                regressed = True  # one per instance: the rest of a replayed run says nothing new
                # A copy of a seq already delivered (a run re-sent after a crash) is told apart
                # from a seq seen for the first time after a newer one (a true reorder).
                kind = "replayed_after_newer" if n.seq in delivered else "order_regressed"
                out.append(Anomaly(kind, f"{name} {token}: seq {n.seq} after {newest.seq}"))
            delivered.add(n.seq)
            if newest is None or n.seq > newest.seq:
                if newest is not None and n.at < newest.at:
                    out.append(
                        Anomaly("occurred_at_backwards", f"{name} {token}: seq {newest.seq} -> {n.seq}")
                    )
                newest = n
        reasons = {n.reason for n in arrived if n.type == "instance-finished"}
        if len(reasons) > 1:
            named = sorted(map(str, reasons))
            out.append(Anomaly("finish_reasons_differ", f"{name} {token}: reasons {named}"))
        if healthy:
            copies = Counter(n.seq for n in arrived)
            for seq, count in sorted(copies.items()):
                if count > flood:
                    out.append(Anomaly("notification_flood", f"{name} {token}: seq {seq} x{count}"))
    return out


def check_delivery(history: History) -> list[Anomaly]:
    wanted = {(e.token, e.seq) for e in history.events if e.kind in NOTIFIED}
    out = []
    for name, notes in history.notes.items():
        missing = wanted - {(n.token, n.seq) for n in notes}
        for token, seq in sorted(missing):
            out.append(Anomaly("notification_lost", f"{name} {token}: seq {seq} never arrived"))
    return out


def table(verdicts: list[Verdict]) -> str:
    """Schedules and anomalies per fault kind (a schedule counts under each of its faults)."""
    rows: dict[str, Counter[str]] = {kind: Counter() for kind in FAULTS}
    runs: Counter[str] = Counter()
    for v in verdicts:
        for fault in set(v.faults):
            runs[fault] += 1
            rows.setdefault(fault, Counter()).update(v.counts())
    shown = [k for k in KINDS if any(r[k] for r in rows.values())]
    head = ["fault", "schedules", "anomalies", *shown]
    lines = [head]
    for fault, counts in rows.items():
        lines.append([fault, str(runs[fault]), str(sum(counts.values())), *(str(counts[k]) for k in shown)])
    total = Counter[str]()
    for v in verdicts:
        total.update(v.counts())
    lines.append(["(all)", str(len(verdicts)), str(sum(total.values())), *(str(total[k]) for k in shown)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True)) for line in lines)
