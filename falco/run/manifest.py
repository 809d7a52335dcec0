"""Run manifest: one SQLite database (WAL mode) per output directory.

Tables:
    ``runs``   one row per invocation (command, settings, environment, start/end time);
    ``inputs`` one row per input file: status ``done`` | ``no_face`` | ``failed`` and the reason;
    ``faces``  one row per detected face: source, face index, status, geometry, outputs, metrics.

SQLite gives atomic status updates, safe concurrent writers (several ranks of a torchrun job)
and "which faces failed?" as a query. :meth:`RunManifest.export` writes JSONL or CSV.
"""

from __future__ import annotations

import csv
import json
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    command TEXT NOT NULL,
    config TEXT NOT NULL,
    env TEXT,
    started REAL NOT NULL,
    finished REAL,
    summary TEXT
);
CREATE TABLE IF NOT EXISTS inputs (
    source TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    reason TEXT,
    num_faces INTEGER NOT NULL DEFAULT 0,
    outputs TEXT,
    run_id INTEGER,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS faces (
    source TEXT NOT NULL,
    face_index INTEGER NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    data TEXT NOT NULL,
    run_id INTEGER,
    updated REAL NOT NULL,
    PRIMARY KEY (source, face_index)
);
"""

MANIFEST_NAME = "manifest.sqlite"


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=_to_jsonable)


def _to_jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class RunManifest:
    """The manifest of one output directory (``<out>/manifest.sqlite``).

    Args:
        out_dir: Output directory; created if missing.
    """

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / MANIFEST_NAME
        self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self.run_id: int | None = None

    # -- runs ------------------------------------------------------------------------------
    def start_run(self, command: str, config: dict, env: dict | None = None) -> int:
        """Record the start of an invocation; returns its run id."""
        cur = self._db.execute(
            "INSERT INTO runs (command, config, env, started) VALUES (?, ?, ?, ?)",
            (command, _json(config), _json(env or {}), time.time()),
        )
        self.run_id = int(cur.lastrowid)
        return self.run_id

    def finish_run(self, summary: dict) -> None:
        """Record the end of the current invocation and its summary counts."""
        self._db.execute("UPDATE runs SET finished = ?, summary = ? WHERE id = ?",
                         (time.time(), _json(summary), self.run_id))

    def runs(self) -> list[dict]:
        """All recorded invocations, oldest first."""
        rows = self._db.execute("SELECT id, command, config, started, finished, summary FROM runs ORDER BY id")
        return [dict(id=r[0], command=r[1], config=json.loads(r[2]), started=r[3], finished=r[4],
                     summary=json.loads(r[5]) if r[5] else None) for r in rows]

    # -- inputs ----------------------------------------------------------------------------
    def input_status(self, source: str) -> str | None:
        """Status of an input (``done``, ``no_face``, ``failed``) or None if never seen."""
        row = self._db.execute("SELECT status FROM inputs WHERE source = ?", (source,)).fetchone()
        return row[0] if row else None

    def finished_inputs(self) -> set[str]:
        """Inputs that need no more work (``done`` or ``no_face``; failed ones are retried)."""
        rows = self._db.execute("SELECT source FROM inputs WHERE status IN ('done', 'no_face')")
        return {r[0] for r in rows}

    def record_input(self, source: str, status: str, *, reason: str | None = None,
                     faces: Iterable[dict] = (), outputs: dict | None = None) -> None:
        """Record an input and all its faces in one transaction (all or nothing).

        Args:
            source: The input's path relative to the input root (its stable key).
            status: ``done``, ``no_face`` or ``failed``.
            reason: Why it failed or has no face.
            faces: One dict per face; keys ``status`` (default ``done``) and ``reason`` are
                columns, everything else is stored as JSON.
            outputs: Paths written for this input (relative to the output directory).
        """
        faces = list(faces)
        now = time.time()
        with self._transaction():
            self._db.execute("DELETE FROM faces WHERE source = ?", (source,))
            self._db.execute(
                "INSERT OR REPLACE INTO inputs (source, status, reason, num_faces, outputs, run_id, updated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (source, status, reason, len(faces), _json(outputs or {}), self.run_id, now),
            )
            for index, face in enumerate(faces):
                face = dict(face)
                face_status = face.pop("status", "done")
                face_reason = face.pop("reason", None)
                self._db.execute(
                    "INSERT INTO faces (source, face_index, status, reason, data, run_id, updated) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (source, index, face_status, face_reason, _json(face), self.run_id, now),
                )

    def _select(self, columns: str, table: str, status: str | None, order: str) -> sqlite3.Cursor:
        """``SELECT columns FROM table``, only the rows of ``status`` if given, sorted by ``order``."""
        where, args = (" WHERE status = ?", (status,)) if status is not None else ("", ())
        return self._db.execute(f"SELECT {columns} FROM {table}{where} ORDER BY {order}", args)

    def inputs(self, status: str | None = None) -> list[dict]:
        """Input rows, optionally filtered by status, sorted by source."""
        rows = self._select("source, status, reason, num_faces, outputs", "inputs", status, "source")
        return [dict(source=r[0], status=r[1], reason=r[2], num_faces=r[3], outputs=json.loads(r[4] or "{}"))
                for r in rows]

    def faces(self, status: str | None = None) -> list[dict]:
        """Face rows (their JSON data merged in), sorted by source then face index."""
        rows = self._select("source, face_index, status, reason, data", "faces", status, "source, face_index")
        return [dict(json.loads(r[4]), source=r[0], face_index=r[1], status=r[2], reason=r[3]) for r in rows]

    def export(self, path: str | Path, table: str = "faces") -> Path:
        """Export ``faces`` or ``inputs`` as JSONL (``.jsonl``) or CSV (``.csv``)."""
        rows = self.faces() if table == "faces" else self.inputs()
        path = Path(path)
        if path.suffix == ".csv":
            keys = sorted({k for row in rows for k in row})
            with open(path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=keys)
                writer.writeheader()
                for row in rows:
                    writer.writerow({k: _json(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})
        else:
            with open(path, "w") as f:
                for row in rows:
                    f.write(_json(row) + "\n")
        return path

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def __enter__(self) -> "RunManifest":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _transaction(self):
        db = self._db

        class _Tx:
            def __enter__(self_inner):
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self_inner, exc_type, *rest):
                db.execute("ROLLBACK" if exc_type else "COMMIT")
                return False

        return _Tx()
