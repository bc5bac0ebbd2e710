"""Many rows in one PostgreSQL statement: one array per column, ``unnest``-ed.

A round of the conversation manager writes a few hundred rows at once (messages, outbox
rows, receipts settled, replies marked sent). Through SQLAlchemy's executemany or
"insertmanyvalues" each row is bound and processed on its own, which was the largest
part of a round's database CPU. Here the statement is a fixed text whatever the row count
(asyncpg prepares it once per connection), each column's values go through the column
type's own bind processor (JSON serialised, datetimes checked as aware, exactly as a
Core statement would), and the arrays are bound as a handful of parameters.

It runs through ``exec_driver_sql``: in the session's transaction, with SQLAlchemy's
error translation (a dropped connection is still an ``OperationalError`` to the caller).
SQLite has no arrays; its callers keep their own path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["insert_rows", "update_rows"]

_Processor = Callable[[Any], Any] | None


def _array_type(table: Table, column: str, dialect: Dialect) -> str:
    """The column's PostgreSQL type for an array cast, without a length: an explicit cast
    to ``varchar(n)`` would cut a long value silently, where the column's own assignment
    cast rejects it."""
    compiled = table.c[column].type.compile(dialect=dialect)
    return re.sub(r"\(\d+\)", "", compiled)


def _processors(table: Table, columns: Sequence[str], dialect: Dialect) -> list[_Processor]:
    return [table.c[c].type.dialect_impl(dialect).bind_processor(dialect) for c in columns]


# built statements and processors, by (kind, table, columns…, dialect name): a few dozen
_BUILT: dict[tuple[Any, ...], tuple[str, list[_Processor]]] = {}


def _built(
    key: tuple[Any, ...], dialect: Dialect, build: Callable[[], tuple[str, list[_Processor]]]
) -> tuple[str, list[_Processor]]:
    full = (*key, dialect.name)
    found = _BUILT.get(full)
    if found is None:
        found = _BUILT[full] = build()
    return found


def _insert_sql(
    table: Table, columns: tuple[str, ...], dialect: Dialect, returning: bool
) -> tuple[str, list[_Processor]]:
    return _built(
        ("insert", table.name, columns, returning),
        dialect,
        lambda: _build_insert(table, columns, dialect, returning),
    )


def _build_insert(
    table: Table, columns: tuple[str, ...], dialect: Dialect, returning: bool
) -> tuple[str, list[_Processor]]:
    names = ", ".join(columns)
    arrays = ", ".join(
        f"${n}::{_array_type(table, c, dialect)}[]" for n, c in enumerate(columns, 1)
    )
    # ORDER BY the ordinality: the ids a sequence gives are then ascending in the order
    # of the rows (what SQLAlchemy's own sorted "insertmanyvalues" relies on too)
    sql = (
        f"INSERT INTO {table.name} ({names}) "
        f"SELECT {', '.join(f'r.{c}' for c in columns)} "
        f"FROM unnest({arrays}) WITH ORDINALITY AS r({names}, row_position) "
        "ORDER BY r.row_position"
    )
    if returning:
        sql += " RETURNING id"
    return sql, _processors(table, columns, dialect)


def _arrays(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], processors: list[_Processor]
) -> tuple[list[Any], ...]:
    out: list[list[Any]] = []
    for column, process in zip(columns, processors, strict=True):
        values = [row[column] for row in rows]
        if process is not None:
            values = [process(v) for v in values]
        out.append(values)
    return tuple(out)


async def insert_rows(
    session: AsyncSession, table: Table, rows: Sequence[Mapping[str, Any]], *, returning: bool
) -> list[int]:
    """Insert ``rows`` (the same columns each) in one statement; with ``returning``, their
    new ids in the order given (else an empty list)."""
    if not rows:
        return []
    connection = await session.connection()
    columns = tuple(rows[0])
    sql, processors = _insert_sql(table, columns, connection.dialect, returning)
    result = await connection.exec_driver_sql(sql, _arrays(rows, columns, processors))
    if not returning:
        return []
    ids = sorted(result.scalars())
    if len(ids) != len(rows) or len(set(ids)) != len(ids):
        raise RuntimeError(f"{table.name}: {len(ids)} ids returned for {len(rows)} rows")
    return ids


def _update_sql(
    table: Table,
    keys: tuple[str, ...],
    varying: tuple[str, ...],
    shared: tuple[str, ...],
    where: str,
    dialect: Dialect,
) -> tuple[str, list[_Processor]]:
    return _built(
        ("update", table.name, keys, varying, shared, where),
        dialect,
        lambda: _build_update(table, keys, varying, shared, where, dialect),
    )


def _build_update(
    table: Table,
    keys: tuple[str, ...],
    varying: tuple[str, ...],
    shared: tuple[str, ...],
    where: str,
    dialect: Dialect,
) -> tuple[str, list[_Processor]]:
    listed = keys + varying
    arrays = ", ".join(f"${n}::{_array_type(table, c, dialect)}[]" for n, c in enumerate(listed, 1))
    assignments = [f"{c} = r.{c}" for c in varying]
    assignments += [f"{c} = ${n}" for n, c in enumerate(shared, len(listed) + 1)]
    conditions = [f"{table.name}.{k} = r.{k}" for k in keys]
    if where:
        conditions.append(where)
    sql = (
        f"UPDATE {table.name} SET {', '.join(assignments)} "
        f"FROM unnest({arrays}) AS r({', '.join(listed)}) "
        f"WHERE {' AND '.join(conditions)}"
    )
    return sql, _processors(table, listed + shared, dialect)


async def update_rows(
    session: AsyncSession,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    keys: Sequence[str],
    shared: Mapping[str, Any] | None = None,
    where: str = "",
) -> None:
    """Update one row per entry of ``rows`` in one statement: each entry names its row by
    the ``keys`` columns and gives the values of the others (the same columns each);
    ``shared`` values are set on every row; ``where`` is a further condition in SQL on
    the table's own columns (a row it excludes is left alone)."""
    if not rows:
        return
    shared = dict(shared or {})
    connection = await session.connection()
    keys = tuple(keys)
    varying = tuple(c for c in rows[0] if c not in keys)
    sql, processors = _update_sql(table, keys, varying, tuple(shared), where, connection.dialect)
    listed = keys + varying
    params = _arrays(rows, listed, processors[: len(listed)])
    extra = [
        value if process is None else process(value)
        for value, process in zip(shared.values(), processors[len(listed) :], strict=True)
    ]
    await connection.exec_driver_sql(sql, (*params, *extra))
