"""The harvest's archive: one tar of a study's finished runs, named by the spec it ran.

A GPU window's results come back as this archive; kfaclab.sweep.merge checks its kind, version
and spec digest before it lets any record into runs/.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from datetime import UTC, datetime
from pathlib import Path

from kfaclab.sweep.spec import Run, Study
from kfaclab.train.record import write_bytes_atomic

ARCHIVE_KIND = "kfaclab.harvest"


ARCHIVE_VERSION = 1


def now() -> str:
    """The time of day, in UTC to the second, as the archive and the harvest report write it."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def spec_digest(study: Study) -> str:
    return hashlib.sha256(study.path.read_bytes()).hexdigest()


def run_files(directory: Path, run: Run) -> list[Path]:
    """What a finished run left: its notebook (when there is one), its record or failure marker."""
    out = []
    for suffix in (".ipynb", ".json", ".failed.json"):
        p = directory / f"{run.name}{suffix}"
        if p.exists():
            out.append(p)
    return out


def pack(path: Path, study: Study, stage: Path, finished: list[tuple[Run, str]], bench_file: Path | None,
         environment: dict) -> None:
    """Write the archive (atomically): every finished run's files under <study>/, the bench
    under bench/, and manifest.json with each file's sha256."""
    entries, runs = [], []
    for run, status in finished:
        files = {}
        for p in run_files(stage, run):
            data = p.read_bytes()
            files[p.name] = hashlib.sha256(data).hexdigest()
            entries.append((f"{study.name}/{p.name}", data))
        runs.append({"name": run.name, "run_id": run.run_id, "status": status, "files": files})
    bench = None
    if bench_file is not None and bench_file.exists():
        data = bench_file.read_bytes()
        bench = {"file": f"bench/{bench_file.name}", "sha256": hashlib.sha256(data).hexdigest()}
        entries.append((bench["file"], data))
    manifest = {"kind": ARCHIVE_KIND, "version": ARCHIVE_VERSION, "study": study.name,
                "spec_sha256": spec_digest(study), "created": now(), "environment": environment,
                "runs": runs, "bench": bench}
    entries.append(("manifest.json", (json.dumps(manifest, indent=1) + "\n").encode()))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            tar.addfile(info, io.BytesIO(data))
    write_bytes_atomic(path, buf.getvalue())
