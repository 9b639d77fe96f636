"""Move a session's vote store (before any vote) to a PostgreSQL database, for a study served by several machines:

    python -m drawbench.postgres SESSION 'host=db.lab dbname=drawbench user=study'

The session's tables go in a schema of their own (named by its comparisons), and SESSION/votes.postgres points every
server, export and `drawbench stats` of the session at it (drawbench/votes.py). The password stays in ~/.pgpass or
$PGPASSWORD, never in the session folder.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from drawbench.choices import VOTES_FILE
from drawbench.votes import POSTGRES_FILE, POSTGRES_SCHEMA, VoteStore, comparison_rows, postgres_schema_name, redact
from imagen.errors import UserError
from imagen.fileio import atomic_write


def use_postgres(session, conninfo: str) -> VoteStore:
    """Move a session's vote store (before any vote) to a PostgreSQL database: create the schema, tables and
    comparisons there, then write SESSION/votes.postgres (atomically) so every server of the session uses it."""
    if "password=" in conninfo or re.search(r"://[^/@]*:[^@]*@", conninfo):
        raise UserError("keep the password out of the connection string (it would be written into the session "
                        "folder): put it in ~/.pgpass or $PGPASSWORD")
    local = Path(session.path) / VOTES_FILE
    if local.is_file() and VoteStore(local).count():
        raise UserError(f"{local} already holds votes; move the store to PostgreSQL before rating starts")
    try:
        import psycopg
    except ImportError as exc:
        raise UserError("the PostgreSQL vote store needs psycopg: pip install 'psycopg[binary]'") from exc
    schema = postgres_schema_name(session)
    try:
        with psycopg.connect(conninfo, connect_timeout=20) as con:
            con.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            con.execute(f'SET search_path TO "{schema}"')
            for stmt in filter(str.strip, POSTGRES_SCHEMA.split(";")):
                con.execute(stmt)
            with con.cursor() as cur:
                cur.executemany("INSERT INTO comparisons VALUES (%s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                                comparison_rows(session))
    except psycopg.OperationalError as exc:
        raise UserError(f"cannot reach PostgreSQL at {redact(conninfo)}: {str(exc).splitlines()[0]}") from exc
    atomic_write(Path(session.path) / POSTGRES_FILE,
                 lambda p: p.write_text(json.dumps({"conninfo": conninfo, "schema": schema}) + "\n"))
    return VoteStore(postgres=(conninfo, schema))


def main(argv: list[str] | None = None) -> int:
    """`python -m drawbench.postgres SESSION CONNINFO`: keep a session's votes in PostgreSQL."""
    import argparse

    from drawbench.pairs import load_session

    p = argparse.ArgumentParser(prog="python -m drawbench.postgres", description=__doc__.split("\n\n")[0])
    p.add_argument("session", type=Path)
    p.add_argument("conninfo", help="a libpq connection string, e.g. 'host=db.lab dbname=drawbench user=rater' "
                                    "(the password goes in ~/.pgpass or $PGPASSWORD)")
    args = p.parse_args(argv)
    try:
        store = use_postgres(load_session(args.session), args.conninfo)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.session}: votes now go to {store.where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
