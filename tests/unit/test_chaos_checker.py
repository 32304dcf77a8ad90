"""The fault checker's verdicts on hand-made histories, with and without each anomaly."""

from __future__ import annotations

import dataclasses

from tests.chaos.checker import FLOOD, Verdict, check, flood_limit, table
from tests.chaos.history import EventRow, History, Note, Sent
from tests.chaos.schedule import FAULTS, PATIENT, generate

T = "00000000-0000-4000-8000-000000000001"
T0 = 1_700_000_000.0


def clean() -> History:
    """One instance created, STARTED, pinged and FINISHED, every reply SUCCESS, both subscribers served."""
    commands = [
        Sent(0, "create", "c", T, "m-c", True, PATIENT, code="SUCCESS", status=True),
        Sent(1, "set-status", "s1", T, "m-s1", True, PATIENT, code="SUCCESS", status=True),
        Sent(2, "ping", "p", T, None, False, PATIENT, code="SUCCESS", status=True),
        Sent(3, "set-status", "s2", T, "m-s2", True, PATIENT, code="SUCCESS", status=True),
    ]
    events = [
        EventRow(T, 1, "created", T0),
        EventRow(T, 2, "status", T0 + 1, "STARTED", "s1"),
        EventRow(T, 3, "ping", T0 + 2, None, "p"),
        EventRow(T, 4, "status", T0 + 3, "FINISHED", "s2"),
        EventRow(T, 5, "finished", T0 + 3, reason="ALL_MANDATORY_STATUSES_ARE_SET"),
    ]
    notes = [
        Note(T, 2, "status-changed", T0 + 1),
        Note(T, 4, "status-changed", T0 + 3),
        Note(T, 5, "instance-finished", T0 + 3, "ALL_MANDATORY_STATUSES_ARE_SET"),
    ]
    return History(
        seed=1,
        faults=["sigkill"],
        commands=commands,
        events=events,
        created_tags={T: "c"},
        notes={"a": list(notes), "b": list(notes)},
        healthy={"a", "b"},
    )


def kinds(verdict: Verdict) -> dict[str, int]:
    return dict(verdict.counts())


def test_a_clean_history_has_no_anomaly() -> None:
    """Every reply matches the log, the log and the subscribers keep the invariants: nothing reported."""
    assert check(clean()).anomalies == []


def test_success_whose_effect_is_absent_is_lost() -> None:
    """A SUCCESS ping with no ping event carrying its tag is an effect lost."""
    history = clean()
    history.events = [e for e in history.events if e.kind != "ping"]
    history.events = [dataclasses.replace(e, seq=i + 1) for i, e in enumerate(history.events)]
    history.notes = {
        name: [dataclasses.replace(n, seq=n.seq - (n.seq > 3)) for n in notes]
        for name, notes in history.notes.items()
    }
    assert kinds(check(history)) == {"effect_lost": 1}


def test_one_ping_recorded_twice_is_applied_twice() -> None:
    """Two ping events with one command's tag: applied twice."""
    history = clean()
    history.events.insert(3, EventRow(T, 4, "ping", T0 + 2, None, "p"))
    history.events = [dataclasses.replace(e, seq=i + 1) for i, e in enumerate(history.events)]
    history.notes = {
        name: [dataclasses.replace(n, seq=n.seq + (n.seq > 3)) for n in notes]
        for name, notes in history.notes.items()
    }
    assert kinds(check(history)) == {"applied_twice": 1}


def test_a_create_that_made_two_instances_is_applied_twice() -> None:
    """A create without a token whose label is on two instances: applied twice."""
    history = clean()
    history.commands.append(
        Sent(4, "create", "free", None, "m-free", True, PATIENT, code="SUCCESS", status=True)
    )
    history.created_tags |= {"t2": "free", "t3": "free"}
    assert kinds(check(history)) == {"applied_twice": 1}


def test_a_refusal_that_was_applied_is_a_lie() -> None:
    """A reply that refuses (status false) a command whose effect is in the log lies."""
    history = clean()
    history.commands[2] = dataclasses.replace(history.commands[2], code="INSTANCE_IS_FINISHED", status=False)
    assert kinds(check(history)) == {"reply_lies": 1}


def test_expired_but_applied_is_a_lie() -> None:
    """EXPIRED says "not applied": with the effect in the log it is a lie."""
    history = clean()
    history.commands[2] = dataclasses.replace(history.commands[2], code="EXPIRED", status=False)
    assert kinds(check(history)) == {"reply_lies": 1}


def test_success_for_a_reused_message_id_is_a_lie() -> None:
    """A different command with a used message_id, answered SUCCESS and not applied: the reply lies."""
    history = clean()
    history.commands.append(
        Sent(4, "ping", "other", T, "m-c", True, PATIENT, reuses_id=True, code="SUCCESS", status=True)
    )
    assert kinds(check(history)) == {"reply_lies": 1}


def test_message_id_reused_refused_and_not_applied_is_fine() -> None:
    """MESSAGE_ID_REUSED with nothing applied is the contract: no anomaly, counted as an outcome."""
    history = clean()
    history.commands.append(
        Sent(
            4,
            "ping",
            "other",
            T,
            "m-c",
            True,
            PATIENT,
            reuses_id=True,
            code="MESSAGE_ID_REUSED",
            status=False,
        )
    )
    verdict = check(history)
    assert (verdict.anomalies, verdict.expected["reused_id_MESSAGE_ID_REUSED"]) == ([], 1)


def test_a_refused_republish_of_an_applied_command_is_not_a_lie() -> None:
    """A re-publish (same body) refused by the rules while its twin was applied: the effect is the twin's."""
    history = clean()
    history.commands.append(
        Sent(
            4,
            "set-status",
            "s1",
            T,
            "m-s1",
            True,
            PATIENT,
            duplicate=True,
            code="STATUS_IS_ALREADY_SET",
            status=False,
        )
    )
    assert check(history).anomalies == []


def test_a_timed_out_client_applied_is_expected_unless_strict() -> None:
    """No answer within a short patience but applied: an expected outcome, an anomaly with strict_timeouts."""
    history = clean()
    history.commands[2] = dataclasses.replace(history.commands[2], patience=0.5, code=None, status=None)
    loose, strict = check(history), check(history, strict_timeouts=True)
    assert (loose.anomalies, loose.expected["timed_out_applied"]) == ([], 1)
    assert kinds(strict) == {"reply_lies": 1}


def test_a_patient_client_with_no_reply_is_reported() -> None:
    """A client that waited the whole run and heard nothing: no_reply."""
    history = clean()
    history.commands[1] = dataclasses.replace(history.commands[1], code=None, status=None)
    assert kinds(check(history)) == {"no_reply": 1}


def test_an_older_notification_first_seen_after_a_newer_one_is_a_reorder() -> None:
    """Seqs 4, 2, 5 at one subscriber: 2 arrives for the first time after 4, order regressed."""
    history = clean()
    a = history.notes["a"]
    a[0], a[1] = a[1], dataclasses.replace(a[0], at=a[1].at)
    assert kinds(check(history)) == {"order_regressed": 1}


def test_a_run_re_sent_after_a_newer_one_is_a_replay() -> None:
    """Seqs 2, 4, 5, then 4, 5 again at one subscriber: an older notification after a newer one, replayed."""
    history = clean()
    history.faults = ["queue_full"]
    history.notes["a"] += history.notes["a"][1:]
    assert kinds(check(history)) == {"replayed_after_newer": 1}


def test_a_repeat_of_the_newest_notification_is_at_least_once() -> None:
    """The newest notification delivered twice in a row is not a regression."""
    history = clean()
    history.notes["a"].append(history.notes["a"][-1])
    assert check(history).anomalies == []


def test_occurred_at_going_back_in_the_log_is_reported() -> None:
    """A later seq with an earlier occurred_at in the events table: occurred_at backwards."""
    history = clean()
    history.events[2] = dataclasses.replace(history.events[2], occurred_at=T0 - 5)
    assert kinds(check(history)) == {"occurred_at_backwards": 1}


def test_occurred_at_going_back_at_a_subscriber_is_reported() -> None:
    """A subscriber's newer seq with an earlier occurred_at: occurred_at backwards."""
    history = clean()
    history.notes["b"][1] = dataclasses.replace(history.notes["b"][1], at=T0)
    assert kinds(check(history)) == {"occurred_at_backwards": 1}


def test_a_finish_announced_with_two_reasons_is_reported() -> None:
    """instance-finished twice at one subscriber, with different reasons."""
    history = clean()
    history.notes["a"].append(Note(T, 5, "instance-finished", T0 + 3, "HEARTBEAT_TIMEOUT"))
    assert kinds(check(history)) == {"finish_reasons_differ": 1}


def test_two_finished_events_in_the_log_are_reported() -> None:
    """A second finished event (same reason) in the log: finished twice."""
    history = clean()
    history.events.append(EventRow(T, 6, "finished", T0 + 4, reason="ALL_MANDATORY_STATUSES_ARE_SET"))
    for notes in history.notes.values():
        notes.append(Note(T, 6, "instance-finished", T0 + 4, "ALL_MANDATORY_STATUSES_ARE_SET"))
    assert kinds(check(history)) == {"finished_twice": 1}


def test_a_ping_after_the_finish_is_reported() -> None:
    """A ping event after the instance's finished event breaks the rules."""
    history = clean()
    history.events.append(EventRow(T, 6, "ping", T0 + 4, None, "late"))
    assert kinds(check(history)) == {"event_after_finish": 1}


def test_a_gap_in_seqs_is_reported() -> None:
    """Seqs 1, 2, 3, 4, 6: a gap."""
    history = clean()
    history.events[-1] = dataclasses.replace(history.events[-1], seq=6)
    for notes in history.notes.values():
        notes[-1] = dataclasses.replace(notes[-1], seq=6)
    assert kinds(check(history)) == {"seq_gap": 1}


def test_a_notification_one_subscriber_never_got_is_lost() -> None:
    """A status event whose notification one subscriber never received."""
    history = clean()
    del history.notes["b"][0]
    assert kinds(check(history)) == {"notification_lost": 1}


def test_a_healthy_subscriber_flooded_with_copies_is_reported() -> None:
    """More than FLOOD copies of one notification at a healthy subscriber."""
    history = clean()
    history.notes["a"][1:1] = [history.notes["a"][0]] * FLOOD
    assert kinds(check(history)) == {"notification_flood": 1}


def test_copies_at_the_full_subscriber_are_not_a_flood() -> None:
    """The subscriber whose queue was full is not held to the copy limit."""
    history = clean()
    history.notes["a"][1:1] = [history.notes["a"][0]] * FLOOD
    history.healthy = {"b"}
    assert check(history).anomalies == []


def test_a_seed_gives_one_schedule() -> None:
    """generate(seed) is a function of the seed: equal for one seed, different for another."""
    assert generate(5) == generate(5)
    assert generate(5) != generate(6)


def test_a_schedule_draws_only_the_kinds_asked_for() -> None:
    """Every fault of generate(seed, kinds=...) is of those kinds."""
    for seed in range(30):
        assert set(generate(seed, kinds=("sigkill", "dup_same")).kinds) <= {"sigkill", "dup_same"}


def test_the_table_counts_a_schedule_under_each_of_its_faults() -> None:
    """A two-fault schedule with one anomaly shows under both faults and once in the total."""
    history = clean()
    history.faults = ["sigkill", "pg_blackhole"]
    del history.notes["b"][0]
    rows = {line.split()[0]: line.split()[1:] for line in table([check(history)]).splitlines()[1:]}
    assert rows["sigkill"] == rows["pg_blackhole"] == rows["(all)"] == ["1", "1", "1"]
    assert rows["sigstop"] == ["0", "0", "0"] and len(rows) == len(FAULTS) + 1


def test_the_copy_limit_follows_the_relays_schedule_for_as_long_as_a_queue_refused() -> None:
    """Refused 5 s: re-sent at 2 s, then at 6 s gets through (3); refused 7 s: 4; none full: FLOOD."""
    assert (flood_limit(5.0), flood_limit(7.0), flood_limit(None)) == (3, 4, FLOOD)


def test_a_re_sent_run_is_an_anomaly_without_a_fault_that_cuts_a_worker_off() -> None:
    """5, 6, 5, 6 at a subscriber: an anomaly after a full queue alone, a counted repeat after a SIGKILL."""
    history = clean()
    history.faults = ["queue_full"]
    history.notes["a"] += list(history.notes["a"])
    assert kinds(check(history)) == {"replayed_after_newer": 1}
    history.faults = ["sigkill"]
    verdict = check(history)
    assert (verdict.anomalies, verdict.expected["repeat_after_cut_off"]) == ([], 1)
