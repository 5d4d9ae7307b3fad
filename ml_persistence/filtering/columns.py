"""The experiment columns a filter may name, and whether each holds numbers or text."""

from __future__ import annotations

NUMBER, TEXT = "number", "text"

# status is the effective status (a dead 'running' run reads 'crashed' or 'stale'); stored_status is as stored.
# Times are text, 'YYYY-MM-DD HH:MM:SS.ffffff' in the writer's local time, so they compare as text.
COLUMNS: dict[str, str] = {
    "id": NUMBER, "name": TEXT, "description": TEXT, "experiment_type": TEXT, "status": TEXT,
    "stored_status": TEXT, "start_time": TEXT, "end_time": TEXT, "duration_seconds": NUMBER,
    "random_seed": NUMBER, "git_commit": TEXT, "git_branch": TEXT, "git_dirty": NUMBER, "hostname": TEXT,
    "pid": NUMBER, "notes": TEXT, "python_version": TEXT, "platform": TEXT, "command": TEXT,
    "created_at": TEXT, "updated_at": TEXT, "uuid": TEXT,
    "num_checkpoints": NUMBER, "best_val_metric": NUMBER, "best_test_metric": NUMBER,
}
