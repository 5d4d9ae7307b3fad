"""What every framework integration shares (ml_persistence.integrations.run), without any framework."""

from __future__ import annotations

import copy
import enum
import json
import pickle
from pathlib import Path

import pytest

from conftest import rows
from ml_persistence import ExperimentTracker
from ml_persistence.integrations.run import TrainingRun, plain, process_rank, running_epoch, training_status


class Mode(enum.Enum):
    FAST = "fast"


def test_plain_turns_settings_into_json_data() -> None:
    converted = plain({"lr": 0.1, "mode": Mode.FAST, "act": json.dumps, "kind": int, "path": Path("/a/b"),
                       "layers": (64, 64), "tags": {"b", "a"}, 3: None})
    assert converted == {"lr": 0.1, "mode": "fast", "act": "json.dumps", "kind": "builtins.int", "path": "/a/b",
                         "layers": [64, 64], "tags": ["a", "b"], "3": None}
    json.dumps(converted)


def test_plain_keeps_at_most_ten_thousand_items_in_all_and_says_what_it_left_out() -> None:
    converted = plain([list(range(1000)) for _ in range(1000)])  # a million numbers, nested
    kept = sum(len([x for x in inner if isinstance(x, int)]) for inner in converted)
    assert kept + len(converted) == 10_000  # the outer 1,000 count too
    assert converted[-1] == ["(left out) 1000 more items not recorded"]
    assert len(json.dumps(converted)) < 200_000
    assert plain({str(i): i for i in range(10_005)})["(left out)"] == "5 more entries not recorded"


@pytest.mark.parametrize(
    "env, rank",
    [({}, 0), ({"RANK": "2", "WORLD_SIZE": "4"}, 2), ({"RANK": "2"}, 0), ({"SLURM_PROCID": "3"}, 0),
     ({"LOCAL_RANK": "1"}, 0), ({"RANK": "1", "WORLD_SIZE": "1"}, 0)],
)
def test_process_rank_trusts_a_launcher_only_with_a_world_of_several(monkeypatch: pytest.MonkeyPatch, env: dict, rank: int) -> None:
    for name in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert process_rank() == rank


def test_statuses_and_epochs() -> None:
    assert training_status(None) == ("completed", None)
    assert training_status(KeyboardInterrupt()) == ("interrupted", "KeyboardInterrupt")
    assert training_status(SystemExit(0))[0] == "interrupted"
    assert training_status(SystemExit(3))[0] == "failed"
    assert training_status(ValueError("x"))[0] == "failed"
    assert [running_epoch(e) for e in (0, 0.25, 1.0, 1.5, 2.0, float("nan"))] == [0, 0, 0, 1, 1, None]


def test_a_copy_is_a_run_of_its_own_and_a_joining_copy_never_ends_the_experiment(db_path: str) -> None:
    run = TrainingRun("test", name="original")
    exp = run.start("original")
    independent = copy.deepcopy(run)
    assert independent.experiment_id is None and independent.start("copy") not in (None, exp)
    worker = pickle.loads(pickle.dumps(run.joining_copy()))
    assert worker.start("ignored") == exp
    worker.log_metrics({"loss": 1.0}, step=1)
    worker.end("completed")  # not its experiment: only flushed
    assert rows(db_path, "SELECT id, status FROM experiments ORDER BY id") == [(exp, "running"), (exp + 1, "running")]
    run.end("completed")
    independent.end("completed")
    assert rows(db_path, "SELECT COUNT(*) FROM metrics WHERE experiment_id = ?", (exp,)) == [(1,)]


def test_joining_the_callers_experiment_leaves_it_to_the_caller(db_path: str) -> None:
    tracker = ExperimentTracker()
    exp = tracker.start_experiment("mine")
    run = TrainingRun("test", tracker=tracker)
    assert run.start("ignored") == exp
    run.end("failed", "not mine to end")
    assert rows(db_path, "SELECT status FROM experiments") == [("running",)]
    assert pickle.loads(pickle.dumps(run)).start("ignored") == exp  # a copy joins it too, without owning it
    tracker.end_experiment()
