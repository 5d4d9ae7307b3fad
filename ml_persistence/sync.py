"""Copy experiments, with everything they own, from one database into another, exactly once.

An experiment is known everywhere by its uuid. In the target, ``sync_marks`` records per experiment
and table the last source row id copied and from which source database; each chunk of rows and its
mark commit in one transaction, under a lock on the experiment, so a sync killed at any point and
run again resumes where the last commit left off, and two syncers of one run take turns.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import math
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Sequence

from . import liveness, storage
from .errors import MLPersistenceError
from .sqlite.sync import CHILD_TABLES, COLUMNS

COPIED_TABLES = ("experiments", "models", "hyperparameters", "metrics", "artifacts", "datasets", "experiment_datasets")
_DATASET_KEY = tuple(COLUMNS["datasets"].index(c) for c in ("name", "version", "split_type"))


class SyncError(MLPersistenceError):
    """A sync that cannot be done as asked (retrying will not help)."""


@dataclass
class Selection:
    """Which source experiments to copy; every field narrows it, the default is all of them."""

    experiments: Sequence[int] = ()
    since: Optional[str] = None
    tags: Sequence[str] = ()
    owner_pid: Optional[int] = None
    owner_host: Optional[str] = None


@dataclass
class ExperimentReport:
    """What one pass did for one experiment."""

    source_id: int
    target_id: Optional[int]
    uuid: Optional[str]
    name: str
    status: str
    ended: bool
    action: str = "unchanged"  # created | updated | unchanged | skipped | refused
    reason: Optional[str] = None
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COPIED_TABLES, 0))
    pending: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COPIED_TABLES, 0))


@dataclass
class SyncReport:
    """What one pass did: per experiment, and in total."""

    source: str
    target: str
    dry_run: bool
    experiments: list[ExperimentReport] = field(default_factory=list)
    seconds: float = 0.0
    stopped: bool = False  # the pass was asked to stop: runs it had not reached are not listed

    def totals(self) -> dict[str, int]:
        """Return rows copied (or, in a dry run, to copy) per table over every experiment."""
        return {t: sum(e.rows[t] for e in self.experiments) for t in COPIED_TABLES}

    def pending(self) -> dict[str, int]:
        """Return rows left to copy per table after the pass (what a stop or new logging left)."""
        return {t: sum(e.pending[t] for e in self.experiments) for t in COPIED_TABLES}

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-able summary."""
        totals = self.totals()
        return {
            "source": self.source, "target": self.target, "dry_run": self.dry_run,
            "seconds": round(self.seconds, 3), "stopped": self.stopped, "rows": totals, "rows_total": sum(totals.values()),
            "pending": self.pending(), "experiments": [asdict(e) for e in self.experiments],
        }


def parse_since(text: str) -> str:
    """Return a --since date as the local-time text start_time compares with; raise SyncError if malformed."""
    for form in ("%Y-%m-%d", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"):
        try:
            return dt.datetime.strptime(text.strip(), form).strftime("%Y-%m-%d %H:%M:%S")
        except ValueError:
            continue
    raise SyncError(f"--since {text!r} is not a date: use YYYY-MM-DD or 'YYYY-MM-DD HH:MM[:SS]'")


def _open(db: str, create: bool) -> Any:
    engine = storage.engine(db)
    module = __import__(f"{engine.__name__}.sync", fromlist=["side"])
    try:
        return module.side(db, create)
    except storage.database_errors() as exc:
        if "not a database" in str(exc):  # a file of something else: no retry will help
            raise SyncError(f"{storage.display(db)} is not an SQLite database") from None
        raise


def _check_pair(source: str, target: str) -> None:
    if storage.identity(source) == storage.identity(target):
        raise SyncError(f"{storage.display(source)} is both the source and the target")
    if not storage.is_url(source) and not os.path.isfile(source):
        raise SyncError(f"no database at {source}")
    if not storage.is_url(source) and not storage.is_url(target) and os.path.exists(target):
        if os.path.samefile(source, target):
            raise SyncError(f"{source} and {target} are the same file")


def sync(
    source: str,
    target: str,
    selection: Selection = Selection(),
    *,
    dry_run: bool = False,
    progress: Optional[Callable[[ExperimentReport, str, int], None]] = None,
    chunk_rows: int = 50_000,
    stop: Optional[threading.Event] = None,
) -> SyncReport:
    """Copy the selected experiments of ``source`` into ``target``; return what was done."""
    source, target = os.fspath(source), os.fspath(target)
    _check_pair(source, target)
    started = time.monotonic()
    report = SyncReport(storage.display(source), storage.display(target), dry_run)
    src = _open_source(source, dry_run)
    try:
        dst = _open_target(target, dry_run)
        try:
            if dst is not None and dst.database_uuid() is not None and dst.database_uuid() == src.database_uuid():
                raise SyncError(
                    f"{report.source} and {report.target} are one database (the same, under two names, or a copy "
                    "of the other): nothing to sync"
                )
            work = _Pass(src, dst, report, dry_run, progress, chunk_rows, stop or threading.Event())
            work.run(selection)
        finally:
            if dst is not None:
                dst.close()
    finally:
        src.close()
    report.seconds = time.monotonic() - started
    report.stopped = stop is not None and stop.is_set()
    if work.refused:
        raise SyncError("; ".join(f"experiment {e.source_id} not copied further: {e.reason}" for e in work.refused))
    return report


def _open_source(source: str, dry_run: bool) -> Any:
    """Open the source without writing to it when it has its uuids already (a file one may only read)."""
    src = _open(source, create=False)
    if dry_run or (src.database_uuid() is not None and src.has_uuids and not src.missing_uuids()):
        return src
    src.close()
    return _open(source, create=True)  # gives older files their uuids, in place


def _open_target(target: str, dry_run: bool) -> Any:
    if not dry_run:
        return _open(target, create=True)
    if not storage.is_url(target) and not os.path.exists(target):
        return None  # nothing there yet: everything would be copied
    from .errors import ReadError

    try:
        return _open(target, create=False)
    except ReadError as exc:
        if "no ml_persistence database" in str(exc):
            return None
        raise


class _Pass:
    """One pass over the selected experiments."""

    def __init__(self, src: Any, dst: Any, report: SyncReport, dry_run: bool,
                 progress: Optional[Callable[[ExperimentReport, str, int], None]], chunk_rows: int,
                 stop: threading.Event) -> None:
        self.src, self.dst, self.report, self.dry_run = src, dst, report, dry_run
        self.progress = progress or (lambda report, table, rows: None)
        self.chunk_rows, self.stop = chunk_rows, stop
        self.previewed: set[tuple] = set()  # datasets a dry run has counted as new
        self.copying: dict[int, dict[str, Any]] = {}  # source id -> row, of every run this pass has begun
        self.refused: list[ExperimentReport] = []  # runs whose source no longer matches what was copied

    def run(self, selection: Selection) -> None:
        owner = None
        if selection.owner_pid is not None:
            owner = (selection.owner_pid, selection.owner_host or socket.gethostname())
        since = parse_since(selection.since) if selection.since else None
        chosen = self.src.experiments(list(selection.experiments), since, list(selection.tags), owner)
        missing = sorted(set(selection.experiments) - {e["id"] for e in chosen})
        if missing:  # not chosen by the other filters, or not there at all
            missing = sorted(set(missing) - {e["id"] for e in self.src.experiments(missing, None, [], None)})
        if missing:
            raise SyncError(f"no experiment {', '.join(map(str, missing))} in {self.report.source}")
        self.source_uuid = self.src.database_uuid()
        if not self.dry_run and (self.source_uuid is None or any(e["uuid"] is None for e in chosen)):
            raise SyncError(f"{self.report.source} has experiments without a uuid; open it once to upgrade it")
        # Rows logged after this point wait for the next pass: a row copied now never points at a model
        # this pass has not copied.
        self.high = self.src.high_water()
        for experiment in chosen:
            if self.stop.is_set():
                break
            if experiment["id"] not in self.copying:  # else copied already, as another run's dependency
                self.copying[experiment["id"]] = experiment
                self.report.experiments.append(self._experiment(experiment))

    def _experiment(self, experiment: dict[str, Any]) -> ExperimentReport:
        status = liveness.with_liveness(self.src.reader, dict(experiment))["status"] or "running"
        entry = ExperimentReport(
            experiment["id"], None, experiment["uuid"], experiment["name"], status, status != "running"
        )
        values = tuple(experiment[c] for c in COLUMNS["experiments"])
        if self.dry_run:
            self._preview(experiment, entry, values)
            return entry
        values = self.dst.stored("experiments", values)
        uuid = experiment["uuid"]
        with self.dst.transaction(uuid):
            found = self.dst.find(uuid)
            marks = self.dst.marks(uuid)
            if found is None:
                self.dst.forget(uuid)  # a copy deleted in the target is copied whole again
                entry.target_id = self.dst.insert_experiment(values)
                self.dst.set_mark(uuid, "experiments", self.source_uuid, experiment["id"])
                entry.action, entry.rows["experiments"] = "created", 1
            else:
                entry.target_id = found[0]
                origin = marks.get("experiments", (None, 0))[0]
                if origin != self.source_uuid:
                    entry.action = "skipped"
                    entry.reason = (
                        "the target's copy of this run started there" if origin is None
                        else "the target's copy of this run came from another database"
                    )
                    return entry
                if not _same(found[1], values):
                    self.dst.update_experiment(found[0], values)
                    entry.action, entry.rows["experiments"] = "updated", 1
        self.progress(entry, "experiments", entry.rows["experiments"])
        try:
            for table in CHILD_TABLES:
                if self.stop.is_set():
                    break
                self._copy_table(experiment, entry, table)
        except _Diverged as exc:
            entry.action, entry.reason = "refused", str(exc)
            self.refused.append(entry)
            return entry
        if not self.stop.is_set():
            self._copy_links(experiment, entry)
        for table in CHILD_TABLES:
            mark = self.dst.marks(uuid).get(table, (None, 0))[1]
            entry.pending[table] = self.src.count_after(table, experiment["id"], mark)
        if entry.action == "unchanged" and any(entry.rows.values()):
            entry.action = "updated"
        return entry

    def _copy_table(self, experiment: dict[str, Any], entry: ExperimentReport, table: str) -> None:
        """Copy the experiment's new rows of ``table``, a chunk of source ids per target transaction."""
        uuid, source_id, copied = experiment["uuid"], experiment["id"], 0
        start = self.dst.marks(uuid).get(table, (None, 0))[1]
        copied_last = self.dst.last_row(uuid, table)
        if copied_last is not None and self.src.fingerprint(table, copied_last[0]) != copied_last[1]:
            raise _Diverged(
                f"the source's {table} row {copied_last[0]} is not the one copied from it (restored from an "
                "older copy, or copied from another machine?): new rows there may reuse ids already copied"
            )
        # Chunks cover the run's own new rows only, not every id since the mark (other runs' rows).
        low, high = self.src.new_range(table, source_id, start)
        upto = min(high, self.high[table])
        if not high or max(start, low - 1) >= upto:
            return
        last = high if high <= upto else self.src.new_range(table, source_id, start, upto)[1]
        last_row = (last, self.src.fingerprint(table, last))
        reader = None
        if table != "models":
            models = self._model_map(experiment, entry, table, max(start, low - 1), upto) if "model_id" in COLUMNS[table] else {}
            # Rows travel as the source query shapes them (ids mapped in SQL): no Python per row. The
            # next chunk is read while this one is written, unless another syncer moved the mark.
            reader = _ReadAhead(
                lambda after, end: self.src.rows_between(table, source_id, after, end, entry.target_id, models),
                self.chunk_rows, upto,
            )
        try:
            while not self.stop.is_set():
                with self.dst.transaction(uuid):
                    mark = max(self.dst.marks(uuid).get(table, (None, 0))[1], low - 1)
                    if mark >= upto:
                        break
                    if reader is None:
                        found = self.src.rows_after(table, source_id, mark, upto, self.chunk_rows)
                        self.dst.insert_models(uuid, [(row[0], (entry.target_id, *row[2:])) for row in found])
                        end = upto if len(found) < self.chunk_rows else found[-1][0]
                    else:
                        found, end = reader.take(mark)
                        if found:
                            self.dst.insert_rows(table, found)
                    self.dst.set_mark(uuid, table, self.source_uuid, end, last_row if end >= last else None)
                copied += len(found)
                entry.rows[table] = copied
                self.progress(entry, table, copied)
        finally:
            if reader is not None:
                reader.close()

    def _model_map(self, experiment: dict[str, Any], entry: ExperimentReport, table: str, after: int,
                   upto: int) -> dict[int, int]:
        """Return {source model id: target model id} for every model the rows to copy point at.

        A row may point at another run's model (an evaluation of a trained checkpoint): that run is
        copied first. A model whose run the target holds from elsewhere cannot be mapped; the row
        keeps no model_id then, and the report says how many did so.
        """
        mapping = self.dst.model_ids(experiment["uuid"])
        foreign = [m for m in self.src.model_refs(table, experiment["id"], after, upto) if m not in mapping]
        owners = self.src.model_owners(foreign)
        ahead = [m for m, e in owners.items() if e == experiment["id"]]
        if ahead:
            # Models this run registered after the pass began (in the same transaction as a row pointing at
            # them, on a PostgreSQL source): copied now; their own turn skips them.
            rows = self.src.rows_by_id("models", ahead)
            with self.dst.transaction(experiment["uuid"]):
                self.dst.insert_models(experiment["uuid"], [(row[0], (entry.target_id, *row[2:])) for row in rows])
            mapping = self.dst.model_ids(experiment["uuid"])
        for owner_id in sorted(set(owners.values()) - {experiment["id"]}):
            owner = self._copy_dependency(owner_id, experiment)
            if owner is not None:
                known = self.dst.model_ids(owner["uuid"])
                mapping.update({m: known[m] for m, e in owners.items() if e == owner_id and m in known})
        unmapped = len([m for m in foreign if m not in mapping])
        if unmapped:
            entry.reason = (
                f"{unmapped} model(s) its {table} point at are not in the target (their run came from another "
                "database, or is gone); those rows were copied without model_id"
            )
        return mapping

    def _copy_dependency(self, source_id: int, referrer: dict[str, Any]) -> Optional[dict[str, Any]]:
        """Copy the run a model reference points into (once per pass); return its row, or None if skipped."""
        if source_id in self.copying:
            return self.copying[source_id]
        found = self.src.experiments([source_id], None, [], None)
        if not found:
            return None
        self.copying[source_id] = found[0]
        entry = self._experiment(found[0])
        entry.reason = entry.reason or f"its models are referenced by experiment {referrer['id']}"
        self.report.experiments.append(entry)
        return None if entry.action == "skipped" else found[0]

    def _copy_links(self, experiment: dict[str, Any], entry: ExperimentReport) -> None:
        # Sorted by dataset key: two syncers lock the datasets they share in one order (no deadlock).
        links = sorted(self.src.dataset_links(experiment["id"]), key=lambda link: repr(_dataset_key(link[0])))
        if not links:
            return
        with self.dst.transaction(experiment["uuid"]):
            for dataset, usage in links:
                dataset_id, created = self.dst.dataset_id(dataset)
                entry.rows["datasets"] += created
                entry.rows["experiment_datasets"] += self.dst.link(entry.target_id, dataset_id, usage)
        self.progress(entry, "experiment_datasets", entry.rows["experiment_datasets"])

    def _preview(self, experiment: dict[str, Any], entry: ExperimentReport, values: tuple) -> None:
        """Count what a real pass would copy, writing nothing."""
        found = self.dst.find(experiment["uuid"]) if self.dst is not None and experiment["uuid"] else None
        marks = self.dst.marks(experiment["uuid"]) if found is not None else {}
        if found is None:
            entry.action, entry.rows["experiments"] = "created", 1
        else:
            entry.target_id = found[0]
            if marks.get("experiments", (None, 0))[0] != self.src.database_uuid():
                entry.action, entry.reason = "skipped", "the target's copy of this run did not come from this source"
                return
            if not _same(found[1], values):
                entry.action, entry.rows["experiments"] = "updated", 1
        for table in CHILD_TABLES:
            mark = marks.get(table, (None, 0))[1]
            entry.rows[table] = self.src.count_after(table, experiment["id"], mark, self.high[table])
        for dataset, usage in self.src.dataset_links(experiment["id"]):
            known = self.dst.find_dataset(dataset) if self.dst is not None else None
            key = _dataset_key(dataset)
            if known is None and key not in self.previewed:
                self.previewed.add(key)
                entry.rows["datasets"] += 1
            if known is None or found is None or not self.dst.linked(found[0], known, usage):
                entry.rows["experiment_datasets"] += 1
        if entry.action == "unchanged" and any(entry.rows.values()):
            entry.action = "updated"


class _Diverged(Exception):
    """The source no longer holds a row copied from it: copying on could skip or repeat rows."""


class _ReadAhead:
    """Chunks of source rows by id range, the next one read on a thread while the caller writes this one."""

    def __init__(self, fetch: Callable[[int, int], list[tuple]], span: int, upto: int) -> None:
        self.fetch, self.span, self.upto = fetch, span, upto
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ml_persistence-sync-read")
        self.ahead: Optional[tuple[int, concurrent.futures.Future]] = None

    def take(self, after: int) -> tuple[list[tuple], int]:
        """Return (rows, end) of the chunk after ``after``; start reading the one after it."""
        end = min(after + self.span, self.upto)
        if self.ahead is not None and self.ahead[0] == after:
            found = self.ahead[1].result()
        else:
            if self.ahead is not None:
                self.ahead[1].cancel()
            found = self.fetch(after, end)
        self.ahead = None
        if end < self.upto:
            self.ahead = (end, self.pool.submit(self.fetch, end, min(end + self.span, self.upto)))
        return found, end

    def close(self) -> None:
        """Stop reading ahead."""
        self.pool.shutdown(wait=True, cancel_futures=True)


def _dataset_key(values: Sequence[Any]) -> tuple:
    return tuple(values[i] for i in _DATASET_KEY)


def _same(stored: Sequence[Any], values: Sequence[Any]) -> bool:
    """Return True if the target's experiment row already holds ``values`` (as either engine reads them)."""
    for a, b in zip(stored, values):
        if a == b or (a is None) == (b is None) and str(a) == str(b):
            continue
        if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
            continue
        return False
    return True
