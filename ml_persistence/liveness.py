"""Whether a 'running' experiment is still alive: its recorded pid and host, else its last activity."""

from __future__ import annotations

import datetime as dt
import os
import socket
from typing import Any, Mapping, Optional, Sequence

from . import timestamps

# A run on another host (or with no recorded pid) that logged nothing for this long shows as "stale".
STALE_AFTER_SECONDS = 3600.0

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def parse_time(text: Any) -> Optional[float]:
    """Return the epoch seconds of a stored timestamp (local time unless it carries an offset), or None."""
    moment = timestamps.parse(text)
    return None if moment is None else moment.timestamp()


def _boot_time() -> Optional[float]:
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def _proc_stat(pid: int) -> Optional[tuple[str, float]]:
    """Return (state letter, start time in epoch seconds) from /proc, or None where /proc is absent."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except FileNotFoundError:
        return ("gone", 0.0)
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split()  # the command name may contain spaces and parentheses
    boot = _boot_time()
    if boot is None or len(fields) < 20:
        return None
    return fields[0], boot + int(fields[19]) / _CLOCK_TICKS


def process_alive(pid: int, started_at: Optional[float] = None) -> bool:
    """Return True if ``pid`` runs here and (when known) was already running at ``started_at``."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    stat = _proc_stat(pid)
    if stat is None:
        return True
    state, process_start = stat
    if state in ("gone", "Z", "X"):
        return False  # a zombie has died; only its parent has not reaped it yet
    # A process that started after the experiment did has reused a dead trainer's pid.
    return started_at is None or process_start <= started_at + 2.0


def effective_status(
    experiment: Mapping[str, Any],
    last_activity: Optional[float] = None,
    now: Optional[float] = None,
    hostname: Optional[str] = None,
) -> str:
    """Return the stored status, or 'crashed'/'stale' for a 'running' experiment whose process is gone.

    Same host and a recorded pid: 'crashed' when that process no longer exists (SIGKILL, OOM, power).
    Otherwise 'stale' when nothing was logged for STALE_AFTER_SECONDS.
    """
    status = experiment.get("status")
    if status != "running":
        return status
    host = hostname if hostname is not None else socket.gethostname()
    pid = experiment.get("pid")
    started = parse_time(experiment.get("start_time"))
    # The owner's claim: when it started the run, or later resumed it (resume_experiment sets updated_at).
    claimed = max((t for t in (started, parse_time(experiment.get("updated_at"))) if t is not None), default=None)
    if pid and experiment.get("hostname") == host:
        return "running" if process_alive(int(pid), claimed) else "crashed"
    # A claim counts as activity only where this library recorded it (with a pid): the original
    # schema's updated_at is a default set at insert, in UTC.
    latest = max((t for t in (last_activity, claimed if pid else started) if t is not None), default=None)
    now = dt.datetime.now().timestamp() if now is None else now
    if latest is not None and now - latest > STALE_AFTER_SECONDS:
        return "stale"
    return "running"


def last_activity(reader: Any, experiment_id: int) -> Optional[float]:
    """Return when an experiment last logged a metric, model or artifact (epoch seconds), or None."""
    times = [parse_time(text) for text in reader.last_activity_texts(experiment_id)]
    return max((t for t in times if t is not None), default=None)


def with_liveness(reader: Any, experiment: dict[str, Any]) -> dict[str, Any]:
    """Replace a 'running' experiment's status by its effective one, keeping the stored one as stored_status."""
    experiment["stored_status"] = experiment.get("status")
    if experiment.get("status") == "running":
        same_host = experiment.get("pid") and experiment.get("hostname") == socket.gethostname()
        activity = None if same_host else last_activity(reader, experiment["id"])
        experiment["status"] = effective_status(experiment, activity)
    return experiment


# Statuses derived from a stored 'running' row.
LIVE_STATUSES = ("running", "crashed", "stale")


def list_experiments(
    reader: Any,
    experiment_type: Optional[str] = None,
    status: Optional[str] = None,
    tags: Sequence[str] = (),
    name: Optional[str] = None,
    limit: Optional[int] = None,
) -> list[dict[str, Any]]:
    """Return Reader.list_experiments with effective statuses, ``status`` matching the effective one."""
    stored = None if status in LIVE_STATUSES else status
    found = reader.list_experiments(experiment_type, stored, tags, None if status else limit, name)
    found = [with_liveness(reader, e) for e in found]
    if status:
        found = [e for e in found if e["status"] == status]
    return found if limit is None else found[:limit]
