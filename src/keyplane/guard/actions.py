"""What a firing does: revoke or suspend the key (or alert only), record it, tell every sink.

One transaction per firing: the key's change through control.revoke_key / set_suspended (their own
audit entries, ``api_key.deleted`` / ``api_key.suspended``, and the revision bump every instance polls),
the ``guard.fired`` audit entry and the guard event row, all with the rule as the actor. After the
commit: this instance's snapshot is already reloaded (Runtime.write); the revision is published on
Redis for the others; the alert goes to the sinks in the background.

The stored reason is what the key's user reads in the 401 (snapshot.KeyEntry.inactive_reason):
"disabled by the keyplane kill switch: rule token-surge (tokens 4.1x baseline)".
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from sqlalchemy import update

from keyplane import control, ids
from keyplane.alerts import Alert
from keyplane.guard.detectors import Finding
from keyplane.guard.models import GuardEvent
from keyplane.guard.rules import format_duration

log = logging.getLogger("keyplane.guard")

_VERB = {"revoke": "revoked", "suspend": "suspended"}


def reason_text(finding: Finding) -> str:
    return f"disabled by the keyplane kill switch: rule {finding.rule.name} ({finding.summary})"


def dedup_key(rule_name: str, key_id: str) -> str:
    return f"keyplane:{rule_name}:{key_id}"


def rule_summary(finding: Finding) -> dict[str, Any]:
    r = finding.rule
    return {
        "name": r.name,
        "kind": r.kind,
        "scope": r.scope,
        "window": format_duration(r.window_s),
        "threshold": r.threshold,
        "metric": r.metric,
        "min_volume": r.min_volume,
        "mode": r.mode,
        "dry_run": r.dry_run,
    }


async def fire(guard: Any, finding: Finding, targets: list[Any], now: float) -> list[GuardEvent]:
    rt = guard.rt
    rule = finding.rule
    reason = reason_text(finding)
    events: list[GuardEvent] = []
    changed = False
    async with rt.write() as s:
        for entry in targets:
            ev_id = ids.new_id("gevt_")
            actor = control.Actor("guard_rule", rule.name, {"name": rule.name, "kind": rule.kind, "event_id": ev_id})
            row = await control.get_key(s, entry.id)
            action = "none"  # dry run, or the key is already off
            if rule.dry_run or row.revoked_at is not None:
                pass
            elif rule.mode == "alert":
                action = "alerted"
            elif rule.mode == "revoke":
                action = "revoked"
            elif row.suspended_at is None:
                action = "suspended"
            figures = dict(finding.figures)
            if finding.scope == "project":
                figures["project_id"] = finding.entity_id
            # Detection first, then the action: the audit log reads in that order.
            await control.audit(
                s,
                actor,
                "guard.fired",
                {
                    "id": ev_id,
                    "rule": rule_summary(finding),
                    "key_id": row.id,
                    "action": action,
                    "dry_run": rule.dry_run,
                    "figures": figures,
                    "message": reason,
                },
                project_id=row.project_id,
                resource_id=row.id,
            )
            if action == "revoked":
                await control.revoke_key(s, actor, row, reason)
                changed = True
            elif action == "suspended":
                await control.set_suspended(s, actor, row, reason)
                changed = True
            ev = GuardEvent(
                id=ev_id,
                created_at=int(now),
                rule=rule.name,
                kind=rule.kind,
                scope=rule.scope,
                key_id=row.id,
                project_id=row.project_id,
                mode=rule.mode,
                action=action,
                dry_run=rule.dry_run,
                figures=orjson.dumps(figures).decode(),
                message=reason,
            )
            s.add(ev)
            events.append(ev)
    if changed:
        await guard.publish()
    for ev, entry in zip(events, targets, strict=True):
        log_firing(finding, ev, entry)
        guard.alerts.send(fired_alert(guard, finding, ev, entry))
    return events


def log_firing(finding: Finding, ev: GuardEvent, entry: Any) -> None:
    """One WARNING line per firing, on the server's log: the key (redacted, and its id), the rule,
    what was done and the figures. Never the key itself, nor its user-given name."""
    rule = finding.rule
    if rule.dry_run:
        did = f"would have {_VERB.get(rule.mode, 'alerted on')} (dry run)"
    elif ev.action in ("revoked", "suspended"):
        did = ev.action
    elif ev.action == "alerted":
        did = "alerted on"
    else:
        did = "fired on (already off)"
    log.warning(
        "kill switch: rule %s (%s) %s key %s (%s, project %s): %s; figures %s",
        rule.name,
        rule.kind,
        did,
        entry.redacted_value,
        entry.id,
        entry.project_id or "-",
        finding.summary,
        ev.figures,
    )


def _key_obj(entry: Any) -> dict[str, Any]:
    return {"id": entry.id, "name": entry.name, "redacted_value": entry.redacted_value}


def _project_obj(guard: Any, project_id: str | None) -> dict[str, Any] | None:
    if project_id is None:
        return None
    p = guard.rt.snapshot.projects.get(project_id)
    return {"id": project_id, "name": p.name if p else None}


def fired_alert(guard: Any, finding: Finding, ev: GuardEvent, entry: Any) -> Alert:
    rule = finding.rule
    if rule.dry_run and rule.mode != "alert":
        head = f"[dry run] kill switch rule {rule.name} would have {_VERB[rule.mode]}"
    elif rule.dry_run:
        head = f"[dry run] kill switch rule {rule.name} fired on"
    elif ev.action in ("revoked", "suspended"):
        head = f"kill switch rule {rule.name} {ev.action}"
    else:
        head = f"kill switch rule {rule.name} fired on"
    summary = f"{head} key {entry.name} ({entry.id}): {finding.summary}"
    details = {
        "rule": rule_summary(finding),
        "key": _key_obj(entry),
        "project": _project_obj(guard, entry.project_id),
        "figures": orjson.loads(ev.figures),
        "action": ev.action,
        "dry_run": rule.dry_run,
        "event_id": ev.id,
        "message": ev.message,
    }
    severity = "critical" if ev.action in ("revoked", "suspended") else "warning"
    return Alert(
        "guard.fired",
        summary,
        details,
        severity=severity,
        dedup_key=dedup_key(rule.name, entry.id),
        id=ev.id.replace("gevt_", "alert_"),
        created_at=ev.created_at,
    )


async def resolve_resumed(guard: Any) -> int:
    """Resolve the alerts of keys the kill switch suspended and a person resumed (any instance, CLI too)."""
    from keyplane.guard.engine import open_incidents

    rt = guard.rt
    async with rt.read() as s:
        incidents = await open_incidents(s)
    n = 0
    now = int(guard.clock.now())
    for ev in incidents:
        async with rt.sessions() as s, s.begin():
            res = await s.execute(
                update(GuardEvent)
                .where(GuardEvent.id == ev.id, GuardEvent.resolved_at.is_(None))
                .values(resolved_at=now)
            )
            if res.rowcount != 1:  # type: ignore[attr-defined]
                continue  # another instance resolved it
        entry = rt.snapshot.keys_by_id.get(ev.key_id)
        key = _key_obj(entry) if entry is not None else {"id": ev.key_id}
        guard.alerts.send(
            Alert(
                "guard.resolved",
                f"key {key.get('name', ev.key_id)} ({ev.key_id}) was resumed: kill switch rule {ev.rule} resolved",
                {
                    "rule": {"name": ev.rule, "kind": ev.kind},
                    "key": key,
                    "project": _project_obj(guard, ev.project_id),
                    "event_id": ev.id,
                    "action": "resumed",
                },
                severity="info",
                dedup_key=dedup_key(ev.rule, ev.key_id),
                resolve=True,
                created_at=now,
            )
        )
        guard.counters["resolved"] += 1
        n += 1
    return n
