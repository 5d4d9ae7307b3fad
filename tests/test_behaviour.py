"""One behaviour suite over both facades: sync, and async under asyncio and trio."""

from __future__ import annotations

import inspect
import math
from typing import Any

import pytest

import ml_persistence as mp
from conftest import rows

FLAVORS = [("sync", "asyncio"), ("async", "asyncio"), ("async", "trio")]


@pytest.fixture(params=FLAVORS, ids=["sync", "async-asyncio", "async-trio"])
def flavor(request: pytest.FixtureRequest) -> tuple[str, str]:
    return request.param


@pytest.fixture
def anyio_backend(flavor: tuple[str, str]) -> str:
    return flavor[1]


class Api:
    """Builds sync or async facade objects; ``do`` awaits only what is awaitable."""

    def __init__(self, kind: str, db: str) -> None:
        self.kind, self.db = kind, db
        prefix = "Async" if kind == "async" else ""
        self._classes = {n: getattr(mp, prefix + n) for n in ("ExperimentTracker", "ModelRegistry", "DatasetManager", "MetricsLogger")}

    def tracker(self) -> Any:
        return self._classes["ExperimentTracker"](self.db)

    def registry(self) -> Any:
        return self._classes["ModelRegistry"](self.db)

    def datasets(self) -> Any:
        return self._classes["DatasetManager"](self.db)

    def metrics(self) -> Any:
        return self._classes["MetricsLogger"](self.db)

    @staticmethod
    async def do(result: Any) -> Any:
        return await result if inspect.isawaitable(result) else result


@pytest.fixture
def api(flavor: tuple[str, str], db_path: str) -> Api:
    return Api(flavor[0], db_path)


pytestmark = pytest.mark.anyio


async def test_start_log_end_roundtrip(api: Api, db_path: str) -> None:
    t = api.tracker()
    exp = await api.do(t.start_experiment("run", experiment_type="rl", tags=["a", "b"], random_seed=7, metadata={"k": 1}))
    t.log_hyperparameters_batch({"lr": 3e-4, "layers": 3, "use_gae": True, "name": "ppo", "sizes": [64, 64], "none": None})
    for episode in range(50):
        t.log_metrics_batch({"train_return": episode * 1.5, "policy_loss": 1.0 / (episode + 1)}, episode=episode)
    await api.do(t.end_experiment(notes="done"))
    assert rows(db_path, "SELECT COUNT(*) FROM metrics WHERE experiment_id = ?", (exp,)) == [(100,)]
    got = await api.do(t.get_experiment(exp))
    assert got["status"] == "completed" and got["notes"] == "done"
    assert got["tags"] == ["a", "b"] and got["random_seed"] == 7 and got["metadata"] == {"k": 1}
    assert got["end_time"] >= got["start_time"] and got["duration_seconds"] >= 0
    assert got["hyperparameters"] == {"lr": 3e-4, "layers": 3, "use_gae": True, "name": "ppo", "sizes": [64, 64], "none": None}
    assert got["python_version"] and got["hostname"] and got["pid"]


async def test_split_inferred_from_prefix_and_explicit_split_wins(api: Api) -> None:
    t = api.tracker()
    exp = await api.do(t.start_experiment("splits"))
    t.log_metrics_batch({"train_loss": 1.0, "val_sharpe": 2.0, "test_return": 3.0, "entropy": 4.0}, step=1)
    t.log_metric("val_acc", 0.5, split="holdout")
    m = api.metrics()
    splits = {}
    for name in ("train_loss", "val_sharpe", "test_return", "entropy", "val_acc"):
        (row,) = await api.do(m.get_metric_history(exp, name))
        splits[name] = row["split"]
    assert splits == {"train_loss": "train", "val_sharpe": "val", "test_return": "test", "entropy": None, "val_acc": "holdout"}


async def test_nan_and_infinities_read_back(api: Api) -> None:
    t = api.tracker()
    exp = await api.do(t.start_experiment("specials"))
    t.log_metrics_batch({"x": float("nan")}, step=0)
    t.log_metrics_batch({"x": float("inf")}, step=1)
    t.log_metrics_batch({"x": float("-inf")}, step=2)
    t.log_metrics_batch({"x": 1.25}, step=3)
    history = await api.do(api.metrics().get_metric_history(exp, "x"))
    values = [r["value"] for r in history]
    assert math.isnan(values[0]) and values[1:] == [math.inf, -math.inf, 1.25]
    assert [r["step"] for r in history] == [0, 1, 2, 3]


async def test_history_fields_and_value_json_and_metadata(api: Api) -> None:
    t = api.tracker()
    exp = await api.do(t.start_experiment("json"))
    t.log_metric("action_distribution", 0.0, episode=4, value_json='{"hold": 0.5, "buy": 0.5}')
    t.log_metric("return_bull", 0.1, episode=4, metadata={"regime": "bull"})
    (dist,) = await api.do(api.metrics().get_metric_history(exp, "action_distribution"))
    (bull,) = await api.do(api.metrics().get_metric_history(exp, "return_bull"))
    assert dist["value_json"] == '{"hold": 0.5, "buy": 0.5}' and dist["episode"] == 4
    assert bull["metadata"] == {"regime": "bull"}
    assert set(dist) >= {"value", "episode", "step", "epoch", "split", "timestamp"}
    assert len(dist["timestamp"]) == len("2024-01-01 00:00:00.000000")


async def test_compare_and_summary(api: Api) -> None:
    t = api.tracker()
    ids = []
    for run in range(3):
        ids.append(await api.do(t.start_experiment(f"run{run}")))
        for step, value in enumerate([1.0, 2.0, 3.0, 4.0 + run]):
            t.log_metrics_batch({"val_sharpe": value}, step=step)
    await api.do(t.end_experiment())
    m = api.metrics()
    comparison = await api.do(m.compare_metrics_across_experiments(ids + [999], "val_sharpe", split="val"))
    assert list(comparison) == ids + [999]
    last = comparison[ids[2]]
    values = [1.0, 2.0, 3.0, 6.0]
    mean = sum(values) / 4
    assert last["count"] == 4 and last["mean"] == pytest.approx(mean)
    assert last["std"] == pytest.approx(math.sqrt(sum((x - mean) ** 2 for x in values) / 4))
    assert (last["min"], last["max"], last["first"], last["last"]) == (1.0, 6.0, 1.0, 6.0)
    assert comparison[999]["count"] == 0 and math.isnan(comparison[999]["mean"])
    summary = await api.do(m.get_metrics_summary(ids[0]))
    assert summary["val_sharpe"]["count"] == 4


async def test_models_best_and_order_by_whitelist(api: Api, tmp_path) -> None:
    t = api.tracker()
    exp = await api.do(t.start_experiment("models"))
    ckpt = tmp_path / "ckpt.pth"
    ckpt.write_bytes(b"x" * 2 * 1024 * 1024)
    r = api.registry()
    a = await api.do(r.register_model(exp, str(ckpt), architecture_type="ppo", val_metric=1.0, is_best=True))
    b = await api.do(r.register_model(exp, "missing.pth", val_metric=3.0))
    c = await api.do(r.register_model(exp, "later.pth", val_metric=2.0, is_best=True))
    assert len({a, b, c}) == 3
    best = await api.do(r.get_best_model(experiment_id=exp))
    assert best["id"] == c  # newest model marked best wins over a higher unmarked val_metric
    model_a = await api.do(r.get_model(a))
    assert model_a["checkpoint_size_mb"] == pytest.approx(2.0) and model_a["is_best"] is True
    assert (await api.do(r.get_model(b)))["checkpoint_size_mb"] is None
    ordered = await api.do(r.list_models(experiment_id=exp, order_by="val_metric"))
    assert [m["id"] for m in ordered] == [b, c, a]
    asc = await api.do(r.list_models(experiment_id=exp, order_by="val_metric", ascending=True, limit=2))
    assert [m["id"] for m in asc] == [a, c]
    assert [m["id"] for m in await api.do(r.list_models(is_best=True, order_by="val_metric"))] == [c, a]
    with pytest.raises(ValueError, match="val_metric"):
        await api.do(r.list_models(order_by="val_metric; DROP TABLE models"))
    exp2 = await api.do(t.start_experiment("unmarked"))
    await api.do(r.register_model(exp2, "a.pth", val_metric=0.5))
    top = await api.do(r.register_model(exp2, "b.pth", val_metric=0.9))
    assert (await api.do(r.get_best_model(exp2)))["id"] == top
    exp3 = await api.do(t.start_experiment("none"))
    assert await api.do(r.get_best_model(exp3)) is None


async def test_datasets_dedupe_hash_and_links(api: Api, tmp_path) -> None:
    t = api.tracker()
    exp = await api.do(t.start_experiment("data"))
    d = api.datasets()
    data = tmp_path / "prices.csv"
    data.write_text("date,close\n2023-01-01,16500\n")
    first = await api.do(d.register_dataset("BTC", "2023", split_type="train", num_samples=1, data_path=str(data)))
    again = await api.do(d.register_dataset("BTC", "2023", split_type="train", num_samples=1, data_path=str(data)))
    nosplit = await api.do(d.register_dataset("BTC", "2023"))
    nosplit_again = await api.do(d.register_dataset("BTC", "2023"))
    assert first == again and nosplit == nosplit_again and first != nosplit
    row = await api.do(d.get_dataset(first))
    assert row["data_hash"].startswith("sha256:") and len(row["data_hash"]) == 7 + 64
    d.link_dataset_to_experiment(exp, first, "train")
    d.link_dataset_to_experiment(exp, first, "train")
    linked = await api.do(d.get_experiment_datasets(exp))
    assert [(x["id"], x["usage_type"]) for x in linked] == [(first, "train")]
    assert [x["id"] for x in await api.do(d.get_dataset_experiments(first))] == [exp]
    assert len(await api.do(d.list_datasets(name="BTC"))) == 2


async def test_list_experiments_filters(api: Api) -> None:
    t = api.tracker()
    a = await api.do(t.start_experiment("A", experiment_type="rl", tags=["btc", "ppo"]))
    b = await api.do(t.start_experiment("B", experiment_type="sl", tags=["eth"]))
    await api.do(t.end_experiment(status="failed"))
    assert [e["id"] for e in await api.do(t.list_experiments())] == [b, a]
    assert [e["id"] for e in await api.do(t.list_experiments(experiment_type="rl"))] == [a]
    assert [e["id"] for e in await api.do(t.list_experiments(status="failed"))] == [b]
    assert [e["id"] for e in await api.do(t.list_experiments(tags=["btc"]))] == [a]
    assert [e["id"] for e in await api.do(t.list_experiments(limit=1))] == [b]
    first = (await api.do(t.list_experiments()))[1]
    assert first["status"] == "completed"  # starting B ended A
    assert {"id", "name", "experiment_type", "status", "tags", "start_time", "end_time", "best_val_metric"} <= set(first)


async def test_bad_values_raise_on_the_callers_line_and_nothing_else_is_lost(api: Api, db_path: str) -> None:
    t = api.tracker()
    exp = await api.do(t.start_experiment("bad"))
    t.log_metrics_batch({"ok": 1.0}, step=0)
    with pytest.raises(TypeError):
        t.log_metrics_batch({"loss": "abc"}, step=1)
    with pytest.raises(TypeError):
        t.log_metric("loss", object())
    with pytest.raises(TypeError):
        t.log_metric("loss", [1.0, 2.0])
    with pytest.raises(TypeError):
        t.log_metric("loss", None)
    with pytest.raises(TypeError):
        t.log_metrics_batch({"loss": 1.0}, step="three")
    with pytest.raises(TypeError):
        t.log_metric("loss", 1.0, metadata={"f": object()})
    with pytest.raises(ValueError):
        t.log_metric("loss", 1.0, value_json="{not json")
    with pytest.raises(ValueError):
        t.log_metrics_batch({"": 1.0})
    t.log_metrics_batch({"ok": 2.0, "flag": True, "count": 3}, step=2)
    await api.do(t.flush())
    got = rows(db_path, "SELECT metric_name, value, step FROM metrics WHERE experiment_id = ? ORDER BY id", (exp,))
    assert got == [("ok", 1.0, 0), ("ok", 2.0, 2), ("flag", 1.0, 2), ("count", 3.0, 2)]


async def test_numpy_scalars_are_numbers(api: Api) -> None:
    np = pytest.importorskip("numpy")
    t = api.tracker()
    exp = await api.do(t.start_experiment("numpy", random_seed=np.int64(5)))
    t.log_metrics_batch({"a": np.float32(0.5), "b": np.int64(2), "c": np.bool_(True), "d": np.array(1.5)}, step=np.int32(3))
    t.log_hyperparameters_batch({"lr": np.float64(0.1), "n": np.int16(4)})
    got = {n: (await api.do(api.metrics().get_metric_history(exp, n)))[0] for n in "abcd"}
    assert {n: r["value"] for n, r in got.items()} == {"a": 0.5, "b": 2.0, "c": 1.0, "d": 1.5}
    assert got["a"]["step"] == 3
    assert await api.do(t.get_hyperparameters(exp)) == {"lr": 0.1, "n": 4}


async def test_log_without_experiment_raises(api: Api) -> None:
    t = api.tracker()
    with pytest.raises(mp.NoActiveExperimentError):
        t.log_metric("x", 1.0)
    with pytest.raises(mp.NoActiveExperimentError):
        await api.do(t.end_experiment())


async def test_context_manager_ends_failed_on_exception(api: Api) -> None:
    t = api.tracker()
    if api.kind == "sync":
        with pytest.raises(RuntimeError):
            with t:
                exp = t.start_experiment("cm")
                raise RuntimeError("boom")
    else:
        with pytest.raises(RuntimeError):
            async with t:
                exp = await t.start_experiment("cm")
                raise RuntimeError("boom")
    got = await api.do(api.tracker().get_experiment(exp))
    assert got["status"] == "failed" and "RuntimeError: boom" in got["notes"]
    with pytest.raises(mp.ClosedError):
        await api.do(t.start_experiment("after close"))


async def test_artifacts(api: Api, tmp_path) -> None:
    t = api.tracker()
    exp = await api.do(t.start_experiment("art"))
    plot = tmp_path / "curve.png"
    plot.write_bytes(b"\x89PNG" + b"0" * 1024)
    art = await api.do(t.log_artifact(str(plot), "plot", description="learning curve", metadata={"dpi": 100}))
    (row,) = await api.do(t.list_artifacts(exp))
    assert row["id"] == art and row["artifact_type"] == "plot" and row["artifact_name"] == "curve.png"
    assert row["file_size_mb"] == pytest.approx(1028 / 1024 / 1024) and row["metadata"] == {"dpi": 100}


async def test_flush_makes_everything_visible_to_other_connections(api: Api, db_path: str) -> None:
    t = api.tracker()
    exp = await api.do(t.start_experiment("flush"))
    for step in range(20_000):
        t.log_metrics_batch({"a": step, "b": -step}, step=step)
    await api.do(t.flush(timeout=60))
    assert rows(db_path, "SELECT COUNT(*), SUM(value) FROM metrics WHERE experiment_id = ? AND metric_name = 'a'", (exp,)) == [
        (20_000, float(sum(range(20_000))))
    ]


def test_best_val_metric_is_the_newest_marked_best_as_for_a_falling_loss(db_path: str) -> None:
    tracker = mp.ExperimentTracker()
    exp = tracker.start_experiment("loss-monitored")
    registry = mp.ModelRegistry()
    for loss, best in ((0.9, True), (0.95, False), (0.4, True), (0.2, True), (0.3, False)):
        registry.register_model(exp, f"ckpt-{loss}.pt", val_metric=loss, is_best=best)
    listed = tracker.list_experiments()[0]
    assert listed["best_val_metric"] == 0.2 == registry.get_best_model(exp)["val_metric"]
    assert listed["num_checkpoints"] == 5
