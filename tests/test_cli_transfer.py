"""`ml-persistence migrate-legacy` and `export`, run as a user would, in subprocesses."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from conftest import rows, subprocess_env
from test_legacy import build_legacy


def cli(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ml_persistence", *args], cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120, input=stdin)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_migrate_legacy_reports_imports_and_is_idempotent(tmp_path: Path) -> None:
    legacy = build_legacy(tmp_path / "experiments.db")
    before = digest(legacy)
    first = cli("migrate-legacy", str(legacy), "--db", "ml.db", "--json", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    episodes_values = rows(str(legacy), """
        SELECT SUM((train_return IS NOT NULL) + (train_reward IS NOT NULL) + (episode_length IS NOT NULL)
                   + (test_return IS NOT NULL) + (test_sharpe IS NOT NULL) + (is_best_model IS NOT NULL)
                   + (avg_policy_loss IS NOT NULL) + (avg_value_loss IS NOT NULL))
        FROM episodes WHERE experiment_id IN (SELECT id FROM experiments)""")[0][0]
    assert report["experiments_imported"] == 4 and report["metrics"] > episodes_values
    assert rows(str(tmp_path / "ml.db"), "SELECT COUNT(*) FROM metrics WHERE metric_type = 'legacy_episode'") == [
        (episodes_values,)
    ]
    counts = rows(str(tmp_path / "ml.db"), "SELECT (SELECT COUNT(*) FROM experiments), (SELECT COUNT(*) FROM metrics)")
    second = cli("migrate-legacy", str(legacy), "--db", "ml.db", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "experiments imported: 0" in second.stdout and "unchanged: 4" in second.stdout
    assert rows(str(tmp_path / "ml.db"), "SELECT (SELECT COUNT(*) FROM experiments), (SELECT COUNT(*) FROM metrics)") == counts
    assert digest(legacy) == before
    listed = json.loads(cli("ls", "--db", "ml.db", "--json", "--tag", "legacy", cwd=tmp_path).stdout)
    assert sorted(e["name"] for e in listed) == sorted(
        r[0] for r in rows(str(legacy), "SELECT name FROM experiments")
    )


def test_migrate_legacy_errors_are_one_line(tmp_path: Path) -> None:
    missing = cli("migrate-legacy", "nope.db", "--db", "ml.db", cwd=tmp_path)
    assert missing.returncode == 1 and "nope.db" in missing.stderr and "Traceback" not in missing.stderr
    assert not (tmp_path / "ml.db").exists()
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite" * 100)
    junk = cli("migrate-legacy", "junk.db", "--db", "ml.db", cwd=tmp_path)
    assert junk.returncode == 1 and "Traceback" not in junk.stderr and len(junk.stderr.strip().splitlines()) == 1
    usage = cli("migrate-legacy", cwd=tmp_path)
    assert usage.returncode == 2 and "usage" in usage.stderr
