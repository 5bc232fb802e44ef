"""`python -m kfaclab harvest-merge ARCHIVE runs/<study>`: a harvest's runs into the study.

All or nothing: every member of the archive is checked before anything is written, and any
problem refuses the whole archive with one line naming it. Checked: the archive is a harvest
of this study (manifest kind, version, study name); every member is a plain file with a plain
name under the study's folder, `bench/` or `manifest.json`, listed in the manifest with its
sha256; every run is one of the spec's runs (name and run id), appears once, is not already
done in the study, and has a record that passes `validate_record`, whose config gives the
run's id again and whose status is final (completed, diverged or failed), and a notebook that
is a notebook (a run failed before its notebook existed may have a failure marker instead).
Then each run's notebook is written before its record (both atomically), so a run never
looks done without its notebook; a failure marker that a finished run replaces is removed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from kfaclab.errors import UsageError
from kfaclab.sweep.archive import ARCHIVE_KIND, ARCHIVE_VERSION
from kfaclab.sweep.bracket import load_grown
from kfaclab.sweep.lock import study_lock
from kfaclab.sweep.state import run_state
from kfaclab.train.config import RunConfig
from kfaclab.train.record import validate_record, write_bytes_atomic

NAME = re.compile(r"^[A-Za-z0-9._+=-]+$")
MAX_BYTES = 1 << 30  # an archive that unpacks to more than this is not a harvest


@dataclass
class MergeSummary:
    study: str
    merged: dict = field(default_factory=dict)  # status -> count
    bench: list = field(default_factory=list)

    def line(self) -> str:
        parts = ", ".join(f"{n} {s}" for s, n in self.merged.items() if n)
        bench = f"; bench: {', '.join(self.bench)}" if self.bench else ""
        return f"merged into {self.study}: {sum(self.merged.values())} run(s) ({parts or 'none'}){bench}"


def _read_members(archive: Path) -> dict[str, bytes]:
    # The whole gzip stream is decompressed first, so its CRC and length are checked even where
    # the tar reader would stop early (damage in the trailing padding is damage too).
    try:
        raw = archive.read_bytes()
    except OSError as e:
        raise UsageError(f"{archive}: cannot read it ({e.strerror}); give the harvest-<study>.tar.gz a harvest "
                         "wrote") from None
    if raw[:2] != b"\x1f\x8b":
        raise UsageError(f"{archive}: not a readable harvest archive (not gzip); give the harvest-<study>.tar.gz "
                         "a harvest wrote")
    try:
        data = gzip.decompress(raw)
        if len(data) > MAX_BYTES:
            raise UsageError(f"{archive}: unpacks to more than {MAX_BYTES >> 20} MiB; not a harvest")
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:")
    except (OSError, EOFError, zlib.error, tarfile.TarError) as e:
        raise UsageError(f"{archive}: the archive is damaged ({e}); copy it again") from None
    members = {}
    with tar:
        try:
            for m in tar:
                parts = m.name.split("/")
                if not m.isfile() or m.name.startswith("/") or not all(NAME.match(p) and p not in (".", "..")
                                                                       for p in parts) or len(parts) > 2:
                    raise UsageError(f"{archive}: member '{m.name}' is not a plain file with a plain name; refusing "
                                     "the archive")
                if m.name in members:
                    raise UsageError(f"{archive}: '{m.name}' appears twice; refusing the archive")
                members[m.name] = tar.extractfile(m).read()
        except (OSError, EOFError, tarfile.TarError) as e:
            raise UsageError(f"{archive}: the archive is damaged ({e}); copy it again") from None
    return members


def _json(data: bytes, what: str):
    try:
        return json.loads(data)
    except ValueError as e:
        raise UsageError(f"{what} is not valid JSON ({e})") from None


def check_archive(archive: str | Path, target: str | Path):
    """Validate the archive against the study; returns (study, writes, bench) or raises UsageError."""
    archive = Path(archive)
    target = Path(target)
    spec = target if target.suffix in (".yaml", ".yml") else target / "study.yaml"
    study = load_grown(spec)
    members = _read_members(archive)
    if "manifest.json" not in members:
        raise UsageError(f"{archive}: no manifest.json; not a kfaclab harvest archive")
    manifest = _json(members["manifest.json"], f"{archive}: manifest.json")
    if not isinstance(manifest, dict) or manifest.get("kind") != ARCHIVE_KIND:
        raise UsageError(f"{archive}: manifest.json is not a kfaclab harvest manifest")
    if manifest.get("version") != ARCHIVE_VERSION:
        raise UsageError(f"{archive}: harvest archive version {manifest.get('version')!r}; this kfaclab reads "
                         f"version {ARCHIVE_VERSION}")
    if manifest.get("study") != study.name:
        raise UsageError(f"{archive}: a harvest of study '{manifest.get('study')}', not of '{study.name}' "
                         f"({spec}); merge it into its own study")
    by_name = {r.name: r for r in study.runs}
    listed: dict[str, str] = {}  # member -> sha256 the manifest gives
    writes, seen = [], set()
    runs = manifest.get("runs")
    if not isinstance(runs, list):
        raise UsageError(f"{archive}: manifest.json has no list of runs")
    for entry in runs:
        if not isinstance(entry, dict) or not isinstance(entry.get("files"), dict):
            raise UsageError(f"{archive}: a run entry of manifest.json is malformed: {entry!r:.120}")
        name, run_id, status = entry.get("name"), entry.get("run_id"), entry.get("status")
        where = f"{archive}: run {name}"
        run = by_name.get(name)
        if run is None or run.run_id != run_id:
            raise UsageError(f"{where} (id {run_id}) is not a run of {spec} as it stands; the archive belongs to "
                             "another version of the spec")
        if name in seen:
            raise UsageError(f"{where} appears twice in the archive")
        seen.add(name)
        if run_state(study.directory, run) == "done":
            raise UsageError(f"{where} is already done in {study.directory} (merged before?); nothing was written")
        files = {}
        for fname, digest in entry["files"].items():
            member = f"{study.name}/{fname}"
            if not (fname.startswith(name + ".") and fname[len(name):] in (".ipynb", ".json", ".failed.json")):
                raise UsageError(f"{where}: file {fname} is not one of its notebook, record or failure marker")
            if member not in members:
                raise UsageError(f"{where}: {member} is listed in the manifest but missing from the archive")
            listed[member] = digest
            if hashlib.sha256(members[member]).hexdigest() != digest:
                raise UsageError(f"{where}: {member} does not match its sha256 in the manifest (altered or damaged)")
            files[fname[len(name):]] = members[member]
        writes.append((run, status, _check_run(run, status, files, where)))
    bench = []
    if manifest.get("bench"):
        b = manifest["bench"]
        member = b.get("file", "") if isinstance(b, dict) else ""
        if not member.startswith("bench/") or member not in members or \
                hashlib.sha256(members[member]).hexdigest() != b.get("sha256"):
            raise UsageError(f"{archive}: the bench file named in the manifest is missing or altered")
        _json(members[member], f"{archive}: {member}")
        listed[member] = b["sha256"]
        bench.append((member.split("/", 1)[1], members[member]))
    extra = sorted(set(members) - set(listed) - {"manifest.json"})
    if extra:
        raise UsageError(f"{archive}: {extra[0]} is not listed in the manifest; refusing the archive")
    return study, writes, bench


def _check_run(run, status, files: dict, where: str) -> dict:
    """The files to write for one run, after checking them."""
    if status not in ("completed", "diverged", "failed"):
        raise UsageError(f"{where}: status {status!r} is not a finished run's (completed, diverged, failed)")
    if ".json" in files:
        rec = _json(files[".json"], f"{where}: the record")
        problems = validate_record(rec) if isinstance(rec, dict) else ["not a JSON object"]
        if problems:
            raise UsageError(f"{where}: the record is malformed: {problems[0]}")
        if rec["run_id"] != run.run_id or rec["status"] != status:
            raise UsageError(f"{where}: the record's id or status ({rec['run_id']}, {rec['status']}) differs from "
                             "the manifest's")
        try:
            config_id = RunConfig.from_record(rec["config"], where=where).run_id()
        except UsageError as e:
            raise UsageError(f"{where}: the record's config is invalid: {e}") from None
        if config_id != run.run_id:
            raise UsageError(f"{where}: the record's config does not give the run's id (altered?)")
    elif status != "failed" or ".failed.json" not in files:
        raise UsageError(f"{where}: no run record in the archive")
    if status in ("completed", "diverged") and ".ipynb" not in files:
        raise UsageError(f"{where}: the executed notebook is missing")
    if ".ipynb" in files:
        nb = _json(files[".ipynb"], f"{where}: the notebook")
        if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list) or "nbformat" not in nb:
            raise UsageError(f"{where}: the notebook is not a Jupyter notebook")
    if ".failed.json" in files:
        _json(files[".failed.json"], f"{where}: the failure marker")
    return files


def merge(archive: str | Path, target: str | Path) -> MergeSummary:
    study, writes, bench = check_archive(archive, target)
    d = study.directory
    with study_lock(d, "merge"):  # never while a sweep of the study makes runs
        return _write(study, writes, bench)


def _write(study, writes, bench) -> MergeSummary:
    d = study.directory
    summary = MergeSummary(study.name, {"completed": 0, "diverged": 0, "failed": 0})
    for run, status, files in writes:
        if ".ipynb" in files:  # the notebook first: a record never stands without it
            write_bytes_atomic(d / f"{run.name}.ipynb", files[".ipynb"])
        if ".failed.json" in files:
            write_bytes_atomic(d / f"{run.name}.failed.json", files[".failed.json"])
        if ".json" in files:
            write_bytes_atomic(d / f"{run.name}.json", files[".json"])
        if status != "failed":
            (d / f"{run.name}.failed.json").unlink(missing_ok=True)
        summary.merged[status] += 1
    for fname, data in bench:
        path = d / "bench" / fname
        if not path.exists():
            write_bytes_atomic(path, data)
            summary.bench.append(str(path))
    return summary
