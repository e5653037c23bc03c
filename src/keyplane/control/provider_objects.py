"""Provider objects made outside keyplane, assigned to a project by an operator.

keyplane records the owner of every provider object created through it (proxy/tenancy.py, table
``provider_objects``); an id it never saw created is owned by no project and refused to every one (fail closed,
docs/proxy.md "What is isolated between projects"). Some objects can only be made outside keyplane: a stored
prompt (``pmpt_...``) is made in the provider's dashboard, a fine-tuned model or a file may predate keyplane.
:func:`assign_provider_object` records such an id as one project's own, as a create through keyplane would, so
that this project, and no other, may name it. An id already owned keeps its owner: ownership is cached by every
instance of a fleet (proxy/owners.py), so it is never moved from one project to another.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keyplane.control.base import Actor, audit, now_s
from keyplane.control.projects import ensure_active, get_project
from keyplane.domain import Conflict, Invalid
from keyplane.store.models import ProviderObject, provider_object_key

EVENT: Final = "provider_object.assigned"
# What an operator may assign: a provider id as the provider spells it (ft: models carry colons).
_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-:.]{0,1023}$")  # PROVIDER_ID_LIMIT
_KIND_RE: Final = re.compile(r"^[a-z][a-z0-9_.]{0,63}$")
# The kind recorded when none is given, by the id's prefix.
_KINDS: Final = (
    ("pmpt_", "prompt"),
    ("ft:", "model"),
    ("file-", "file"),
    ("vs_", "vector_store"),
    ("asst_", "assistant"),
    ("thread_", "thread"),
    ("resp_", "response"),
    ("conv_", "conversation"),
    ("batch_", "batch"),
    ("eval_", "eval"),
    ("ftjob-", "fine_tuning.job"),
    ("cntr_", "container"),
)
# A file keyplane never read: as a batch input, its requests were never held to the ownership check, so no
# batch may run it (proxy/owners.py UNCHECKED_FILE; written out here: control does not import the proxy).
_UNCHECKED_FILE: Final = "file.unchecked"


def default_kind(object_id: str) -> str:
    """The kind an id is recorded with when the operator names none."""
    return next((k for prefix, k in _KINDS if object_id.startswith(prefix)), "object")


async def assign_provider_object(
    s: AsyncSession,
    actor: Actor,
    object_id: Any,
    project_id: Any,
    *,
    kind: Any = None,
    upstream: Any = None,
    upstreams: Iterable[str] = (),
) -> tuple[ProviderObject, bool]:
    """Own provider object ``object_id`` to project ``project_id``: (its row, True when this call assigned it).

    ``upstream`` names the ``[[upstreams]]`` entry whose provider account holds it (one of ``upstreams``): the
    requests naming it go there; none given, they go where they would otherwise go. An id the same project
    already owns is answered as it is (False); one another project owns is refused (409). A file is recorded as
    unchecked: keyplane never read its lines, so no batch may run it."""
    if not isinstance(object_id, str) or not _ID_RE.match(object_id):
        raise Invalid(
            "'id' must be a provider object id (1 to 1024 letters, digits, '_', '-', ':' or '.').", param="id"
        )
    if not isinstance(project_id, str) or not project_id:
        raise Invalid("'project_id' must be a project id.", param="project_id")
    if kind is None:
        kind = default_kind(object_id)
    elif not isinstance(kind, str) or not _KIND_RE.match(kind):
        raise Invalid("'kind' must be a lower-case object kind such as 'prompt' or 'model'.", param="kind")
    if kind == "file" or object_id.startswith("file-"):
        kind = _UNCHECKED_FILE
    known = list(upstreams)
    if upstream is None or upstream == "":
        upstream = ""
    elif not isinstance(upstream, str) or upstream not in known:
        raise Invalid(
            f"'upstream' must name one of the configured upstreams: {', '.join(known) or 'none'}.", param="upstream"
        )
    p = await get_project(s, project_id)
    ensure_active(p)
    key = provider_object_key(object_id)  # a long id (a fine-tuned model's name) is owned by its digest
    row = (await s.execute(select(ProviderObject).where(ProviderObject.id == key))).scalar()
    if row is not None:
        if row.project_id == p.id:
            return row, False
        raise Conflict(
            f"The provider object '{object_id}' is already owned by another project; an owned object is not moved.",
            param="id",
            code="object_already_owned",
        )
    t = now_s()
    row = ProviderObject(id=key, project_id=p.id, object=kind, upstream=upstream, created_at=t)
    s.add(row)
    await audit(
        s,
        actor,
        EVENT,
        {"id": object_id, "data": {"kind": kind, "upstream": upstream or None}},
        project_id=p.id,
        resource_id=object_id,
        at=t,
    )
    return row, True
