"""``nuvom status`` names the PostgreSQL DSN and the schema it read (the namespace is part of
it), and never the password: a mistyped DSN or namespace showed an empty deployment that
looked healthy. The test server lets a password it does not ask for through, so the DSNs
below carry one and still connect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg.conninfo
import pytest
from pg_support import DSN

from nuvom_kernel.backends import BackendContext

NUVOM = Path(sys.executable).parent / "nuvom"
PASSWORD = "st4tus-pg-s3cret"


def _status(cwd: Path, dsn: str, namespace: str, *args: str
            ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
    env.update({"NUVOM_QUEUE_BACKEND": "postgres", "NUVOM_RESULT_BACKEND": "postgres",
                "NUVOM_NAMESPACE": namespace, "NUVOM_PLUGINS__POSTGRES__DSN": dsn})
    return subprocess.run([str(NUVOM), "status", *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=60, check=False)


def _as_url(dsn: str, password: str) -> str:
    parts = psycopg.conninfo.conninfo_to_dict(dsn)
    return (f"postgresql://{parts.get('user', 'postgres')}:{password}@"
            f"{parts.get('host', '127.0.0.1')}:{parts.get('port', 5432)}/"
            f"{parts.get('dbname', 'postgres')}")


@pytest.mark.parametrize("form", ["key=value", "url"])
def test_status_names_the_dsn_and_schema_without_the_password(
        tmp_path: Path, context: BackendContext, schema: str, form: str) -> None:
    if form == "key=value":
        dsn, shown = f"{DSN} password={PASSWORD}", f"{DSN} password=***"
    else:
        dsn = _as_url(DSN, PASSWORD)
        shown = dsn.replace(f":{PASSWORD}@", ":***@")
    where = f"{shown}, schema {schema}"
    text = _status(tmp_path, dsn, context.namespace)
    assert text.returncode == 0, text.stderr  # it did connect with that DSN
    assert f"\nstore (queue and results): {where}\n" in text.stdout, text.stdout
    as_json = _status(tmp_path, dsn, context.namespace, "--json")
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert (data["queue_location"], data["result_location"]) == (where, where)
    for done in (text, as_json):
        assert PASSWORD not in done.stdout + done.stderr
