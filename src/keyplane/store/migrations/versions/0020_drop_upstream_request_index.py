"""usage_requests: the index on upstream_request_id is dropped (issue 13)

Revision ID: 0020
Revises: 0019

No query reads usage_requests by the upstream's request id (the Usage API's request list filters by time,
project, key, user, model, kind, upstream and status). The index cost every request at its write: the ids are
random strings, so each insert landed in a random page of a growing B-tree, about half the applier's SQLite time
per request row on the benchmark machine (docs/benchmarks.md). The column stays (it is in every record).
"""

from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage_requests") as b:
        b.drop_index("ix_usage_requests_upstream_id")


def downgrade() -> None:
    with op.batch_alter_table("usage_requests") as b:
        b.create_index("ix_usage_requests_upstream_id", ["upstream_request_id"], unique=False)
