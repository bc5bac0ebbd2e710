"""Many rows in one PostgreSQL statement: one array per column, ``unnest``-ed.

A round of the conversation manager writes a few hundred rows at once (messages, outbox
rows, receipts settled, replies marked sent). Through SQLAlchemy's executemany or
"insertmanyvalues" each row is bound and processed on its own, which was the largest
part of a round's database CPU, and every row count was a new statement to prepare. Here
a column whose values differ is bound as one array and a column with one value in every
row as one parameter, so the statement's text depends on which columns vary, not on the
row count (asyncpg prepares each text once per connection); each value goes through the
column type's own bind processor (JSON serialised, datetimes checked as aware, exactly as
a Core statement would).

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


def _split(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The columns whose values differ between rows (bound as arrays) and those with one
    value in every row (bound once: a round's rows share their channel, timestamps,
    status…, and each array element costs asyncpg about a microsecond to encode). One row
    is all arrays, so that a statement's text depends on its columns only."""
    if len(rows) < 2:
        return tuple(columns), ()
    first = rows[0]
    varying: list[str] = []
    constant: list[str] = []
    for column in columns:
        value = first[column]
        if all(row[column] == value for row in rows):
            constant.append(column)
        else:
            varying.append(column)
    return tuple(varying), tuple(constant)


def _build_insert(
    table: Table,
    varying: tuple[str, ...],
    constant: tuple[str, ...],
    dialect: Dialect,
    returning: bool,
) -> tuple[str, list[_Processor]]:
    names = ", ".join(varying)
    arrays = ", ".join(
        f"${n}::{_array_type(table, c, dialect)}[]" for n, c in enumerate(varying, 1)
    )
    picked = [f"r.{c}" for c in varying] + [
        f"${n}::{_array_type(table, c, dialect)}" for n, c in enumerate(constant, len(varying) + 1)
    ]
    # ORDER BY the ordinality: the ids a sequence gives are then ascending in the order
    # of the rows (what SQLAlchemy's own sorted "insertmanyvalues" relies on too)
    sql = (
        f"INSERT INTO {table.name} ({', '.join(varying + constant)}) "
        f"SELECT {', '.join(picked)} "
        f"FROM unnest({arrays}) WITH ORDINALITY AS r({names}, row_position) "
        "ORDER BY r.row_position"
    )
    if returning:
        sql += " RETURNING id"
    return sql, _processors(table, varying + constant, dialect)


def _params(
    rows: Sequence[Mapping[str, Any]],
    varying: Sequence[str],
    constant: Sequence[str],
    processors: list[_Processor],
    *,
    singles: Mapping[str, Any] | None = None,
) -> tuple[Any, ...]:
    """One array per varying column, then one value per constant column (read from
    ``singles``, else the first row), each through its column type's bind processor."""
    out: list[Any] = []
    for column, process in zip(varying, processors[: len(varying)], strict=True):
        values = [row[column] for row in rows]
        if process is not None:
            values = [process(v) for v in values]
        out.append(values)
    first = rows[0] if singles is None else singles
    for column, process in zip(constant, processors[len(varying) :], strict=True):
        value = first[column]
        out.append(value if process is None else process(value))
    return tuple(out)


async def insert_rows(
    session: AsyncSession, table: Table, rows: Sequence[Mapping[str, Any]], *, returning: bool
) -> list[int]:
    """Insert ``rows`` (the same columns each) in one statement; with ``returning``, their
    new ids in the order given (else an empty list)."""
    if not rows:
        return []
    connection = await session.connection()
    varying, constant = _split(rows, tuple(rows[0]))
    if not varying:  # identical rows: one array still gives the row count
        varying, constant = constant[:1], constant[1:]
    dialect = connection.dialect
    sql, processors = _built(
        ("insert", table.name, varying, constant, returning),
        dialect,
        lambda: _build_insert(table, varying, constant, dialect, returning),
    )
    params = _params(rows, varying, constant, processors)
    result = await connection.exec_driver_sql(sql, params)
    if not returning:
        return []
    ids = sorted(result.scalars())
    if len(ids) != len(rows) or len(set(ids)) != len(ids):
        raise RuntimeError(f"{table.name}: {len(ids)} ids returned for {len(rows)} rows")
    return ids


def _build_update(
    table: Table,
    keys: tuple[tuple[str, ...], tuple[str, ...]],
    values: tuple[tuple[str, ...], tuple[str, ...]],
    where: str,
    dialect: Dialect,
) -> tuple[str, list[_Processor]]:
    """``keys`` and ``values`` are each (bound as arrays, bound once); the parameters are
    the arrays (keys first), then the single keys, then the single values."""
    (array_keys, single_keys), (array_values, single_values) = keys, values
    listed = array_keys + array_values
    singles = single_keys + single_values
    arrays = ", ".join(f"${n}::{_array_type(table, c, dialect)}[]" for n, c in enumerate(listed, 1))
    numbered = {c: n for n, c in enumerate(singles, len(listed) + 1)}
    assignments = [f"{c} = r.{c}" for c in array_values]
    assignments += [f"{c} = ${numbered[c]}" for c in single_values]
    conditions = [f"{table.name}.{k} = r.{k}" for k in array_keys]
    conditions += [f"{table.name}.{k} = ${numbered[k]}" for k in single_keys]
    if where:
        conditions.append(where)
    sql = (
        f"UPDATE {table.name} SET {', '.join(assignments)} "
        f"FROM unnest({arrays}) AS r({', '.join(listed)}) "
        f"WHERE {' AND '.join(conditions)}"
    )
    return sql, _processors(table, listed + singles, dialect)


async def update_rows(
    session: AsyncSession,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    keys: Sequence[str],
    shared: Mapping[str, Any] | None = None,
    where: str = "",
) -> None:
    """Update one row per entry of ``rows`` in one statement: each entry names a distinct
    row by the ``keys`` columns and gives the values of the others (the same columns
    each); ``shared`` values are set on every row; ``where`` is a further condition in SQL
    on the table's own columns (a row it excludes is left alone)."""
    if not rows:
        return
    shared = dict(shared or {})
    connection = await session.connection()
    varying, constant = _split(rows, tuple(rows[0]))
    array_keys = tuple(k for k in keys if k in varying)
    if not array_keys:  # one array still names the rows
        array_keys = (keys[0],)
    single_keys = tuple(k for k in keys if k not in array_keys)
    array_values = tuple(c for c in varying if c not in keys)
    single_values = tuple(c for c in constant if c not in keys)
    dialect = connection.dialect
    keyed = (array_keys, single_keys)
    values = (array_values, (*single_values, *shared))
    sql, processors = _built(
        ("update", table.name, keyed, values, where),
        dialect,
        lambda: _build_update(table, keyed, values, where, dialect),
    )
    params = _params(
        rows,
        array_keys + array_values,
        single_keys + single_values + tuple(shared),
        processors,
        singles={**rows[0], **shared},
    )
    await connection.exec_driver_sql(sql, params)
