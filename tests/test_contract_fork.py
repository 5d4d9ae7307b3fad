"""A forked child on either engine: it writes its own run, and its parent's connections keep working."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from contract_helpers import child_env

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="os.fork")

SCRIPT = """
import os, sys
from ml_persistence import ExperimentTracker, MetricsLogger
db = sys.argv[1]
tracker = ExperimentTracker(db)
parent = tracker.start_experiment("parent")
for i in range(100):
    tracker.log_metric("p", i, step=i)
assert len(MetricsLogger(db).get_metric_history(parent, "p")) == 100  # the parent's reader and writer are open
pid = os.fork()
if pid == 0:
    child = ExperimentTracker(db)
    child.start_experiment("child")
    for i in range(50):
        child.log_metric("c", i, step=i)
    sys.exit(0)  # a normal exit: the child's interpreter finalizes what it inherited
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0
for i in range(100, 200):
    tracker.log_metric("p", i, step=i)
print("steps", [row["step"] for row in MetricsLogger(db).get_metric_history(parent, "p")] == list(range(200)))
tracker.end_experiment()
print("runs", sorted((e["name"], e["status"]) for e in tracker.list_experiments()))
"""


def test_a_forked_child_writes_its_run_and_the_parent_goes_on(any_db: str, tmp_path: Path) -> None:
    (tmp_path / "fork.py").write_text(SCRIPT)
    done = subprocess.run([sys.executable, "fork.py", any_db], cwd=tmp_path, env=child_env(), capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "error" not in done.stderr.lower(), done.stderr
    assert "steps True" in done.stdout, done.stdout
    assert "runs [('child', 'completed'), ('parent', 'completed')]" in done.stdout, done.stdout
