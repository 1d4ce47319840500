"""Tests for the throwaway PostgreSQL server and the database fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy
from pg_server import PostgresServer


@pytest.mark.postgres
def test_server_answers_select_1(pg_url: str) -> None:
    engine = sqlalchemy.create_engine(pg_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("select 1")).scalar_one() == 1
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_created_databases_are_independent(pg_server: PostgresServer) -> None:
    url_a = pg_server.create_database("test_independent_a")
    url_b = pg_server.create_database("test_independent_b")
    engine_a = sqlalchemy.create_engine(url_a)
    engine_b = sqlalchemy.create_engine(url_b)
    try:
        with engine_a.begin() as conn:
            conn.execute(sqlalchemy.text("create table only_in_a (x integer)"))
        assert sqlalchemy.inspect(engine_a).has_table("only_in_a")
        assert not sqlalchemy.inspect(engine_b).has_table("only_in_a")
    finally:
        engine_a.dispose()
        engine_b.dispose()
        pg_server.drop_database("test_independent_a")
        pg_server.drop_database("test_independent_b")


def test_sqlite_url_is_a_writable_file(sqlite_url: str, tmp_path: Path) -> None:
    engine = sqlalchemy.create_engine(sqlite_url)
    try:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("create table t (x integer)"))
            conn.execute(sqlalchemy.text("insert into t values (42)"))
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("select x from t")).scalar_one() == 42
    finally:
        engine.dispose()
    assert (tmp_path / "jobtracker.db").is_file()


def test_db_url_round_trip(db_url: str) -> None:
    engine = sqlalchemy.create_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("create table t (x integer)"))
            conn.execute(sqlalchemy.text("insert into t values (7)"))
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("select count(*) from t")).scalar_one() == 1
    finally:
        engine.dispose()
