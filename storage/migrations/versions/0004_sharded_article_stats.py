"""knowledge-article counts in shards

Every round of answers adds to the counts of the articles it offered. With one row per
article, a round held that row's lock until its commit, and the next round to offer the
same article (on this node or another) waited for that commit. With a shard in the key,
rounds in flight at once write rows of their own; the counts are the sum over shards.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 19:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("kb_article_stats", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("shard", sa.SmallInteger(), nullable=False, server_default="0")
        )
        batch_op.drop_constraint("pk_kb_article_stats", type_="primary")
        batch_op.create_primary_key("pk_kb_article_stats", ["article_id", "shard"])


def downgrade() -> None:
    # fold the shards back into one row per article
    op.execute(
        "UPDATE kb_article_stats SET "
        "offered = (SELECT SUM(s.offered) FROM kb_article_stats s "
        "WHERE s.article_id = kb_article_stats.article_id), "
        "accepted = (SELECT SUM(s.accepted) FROM kb_article_stats s "
        "WHERE s.article_id = kb_article_stats.article_id), "
        "rejected = (SELECT SUM(s.rejected) FROM kb_article_stats s "
        "WHERE s.article_id = kb_article_stats.article_id) "
        "WHERE shard = (SELECT MIN(s.shard) FROM kb_article_stats s "
        "WHERE s.article_id = kb_article_stats.article_id)"
    )
    op.execute(
        "DELETE FROM kb_article_stats WHERE shard <> (SELECT MIN(s.shard) "
        "FROM kb_article_stats s WHERE s.article_id = kb_article_stats.article_id)"
    )
    with op.batch_alter_table("kb_article_stats", schema=None) as batch_op:
        batch_op.drop_constraint("pk_kb_article_stats", type_="primary")
        batch_op.create_primary_key("pk_kb_article_stats", ["article_id"])
        batch_op.drop_column("shard")
