"""ModelRegistry: record checkpoints and find the best one."""

from __future__ import annotations

import os
import time
from typing import Any, Mapping, Optional, Union

from . import validate as v
from .backend import backend_for
from .errors import InvalidTypeError, ModelNotFoundError
from .events import AliasDeleted, AliasSet, ModelRegistered, encode
from .tracker import file_size_mb


class ModelRegistry:
    """Model checkpoints of experiments in ``db_path``; cheap to construct (no thread, no I/O)."""

    def __init__(
        self,
        db_path: Optional[str | os.PathLike[str]] = None,
        *,
        agent: Union[str, bool, None] = None,
        token: Optional[str] = None,
    ) -> None:
        self._backend = backend_for(db_path, agent, token)
        self.db_path = self._backend.path

    def __repr__(self) -> str:
        return f"<ModelRegistry db={self.db_path!r}>"

    def register_model(
        self,
        experiment_id: int,
        checkpoint_path: str | os.PathLike[str],
        architecture_type: Optional[str] = None,
        name: Optional[str] = None,
        version: Optional[str] = None,
        state_dim: Optional[int] = None,
        action_dim: Optional[int] = None,
        episode_num: Optional[int] = None,
        global_step: Optional[int] = None,
        train_metric: Optional[float] = None,
        val_metric: Optional[float] = None,
        test_metric: Optional[float] = None,
        is_best: bool = False,
        metadata: Optional[Mapping[str, Any]] = None,
        hyperparameters: Optional[Mapping[str, Any]] = None,
    ) -> int:
        """Record a checkpoint (its size if the file exists) and return the model's id.

        ``name`` defaults to the checkpoint's file name without extension; ``version`` to
        1, 2, ... per experiment and name.
        """
        experiment_id = v.optional_int("experiment_id", experiment_id)  # type: ignore[assignment]
        if experiment_id is None:
            raise InvalidTypeError("experiment_id is required")
        path = v.path_text("checkpoint_path", checkpoint_path)
        if name is None:  # models.name is NOT NULL in the original schema
            name = os.path.splitext(os.path.basename(path))[0] or "model"
        if version is not None and not isinstance(version, str):
            version = str(v.optional_int("version", version))
        event = ModelRegistered(
            experiment_id=experiment_id,
            name=v.optional_name("name", name),
            version=v.optional_name("version", version),
            architecture_type=v.optional_name("architecture_type", architecture_type),
            state_dim=v.optional_int("state_dim", state_dim),
            action_dim=v.optional_int("action_dim", action_dim),
            checkpoint_path=path,
            checkpoint_size_mb=file_size_mb(path),
            episode_num=v.optional_int("episode_num", episode_num),
            global_step=v.optional_int("global_step", global_step),
            train_metric=v.optional_real("train_metric", train_metric),
            val_metric=v.optional_real("val_metric", val_metric),
            test_metric=v.optional_real("test_metric", test_metric),
            is_best=bool(v.real("is_best", is_best)),
            hyperparameters=v.json_object_text("hyperparameters", hyperparameters),
            metadata=v.json_object_text("metadata", metadata),
            ts=time.time(),
        )
        return self._backend.request(encode(event))

    def get_model(self, model_id: int) -> Optional[dict[str, Any]]:
        """Return one model, or None."""
        return self._backend.read("get_model", model_id)

    def get_best_model(self, experiment_id: Optional[int] = None) -> Optional[dict[str, Any]]:
        """Return the newest model marked best; if none is marked, the highest val_metric; else None."""
        return self._backend.read("get_best_model", experiment_id)

    def list_models(
        self,
        experiment_id: Optional[int] = None,
        is_best: Optional[bool] = None,
        order_by: str = "created_at",
        ascending: bool = False,
        limit: Optional[int] = None,
    ) -> list[dict[str, Any]]:
        """Return models; ``order_by`` must be a column of the models table (else ValueError)."""
        return self._backend.read("list_models", experiment_id, is_best, order_by, ascending, limit)

    def set_alias(self, alias: str, model_id: int) -> None:
        """Make ``alias`` name the model ``model_id``, moving it from any other model in one transaction.

        An alias names one model of the database at a time. Raises ModelNotFoundError (nothing
        changed) if there is no such model.
        """
        alias = v.alias_name(alias)
        model_id = v.optional_int("model_id", model_id)  # type: ignore[assignment]
        if model_id is None:
            raise InvalidTypeError("model_id is required")
        if self._backend.request(encode(AliasSet(alias, model_id, time.time()))) is None:
            raise ModelNotFoundError(f"no model with id {model_id} in {self.db_path}; alias {alias!r} not set")

    def delete_alias(self, alias: str) -> bool:
        """Remove ``alias``; return True if it named a model."""
        return bool(self._backend.request(encode(AliasDeleted(v.alias_name(alias)))))

    def get_model_by_alias(self, alias: str, experiment_id: Optional[int] = None) -> Optional[dict[str, Any]]:
        """Return the model ``alias`` names, or None; with ``experiment_id``, None unless it is that experiment's."""
        alias = v.alias_name(alias)
        experiment_id = v.optional_int("experiment_id", experiment_id)
        return self._backend.read("get_model_by_alias", alias, experiment_id)

    def list_aliases(self, experiment_id: Optional[int] = None) -> list[dict[str, Any]]:
        """Return every alias (of ``experiment_id``'s models, if given) by name, with the model it names."""
        experiment_id = v.optional_int("experiment_id", experiment_id)
        return self._backend.read("list_aliases", experiment_id)

    def flush(self, timeout: Optional[float] = None) -> None:
        """Block until everything logged so far to this database is committed."""
        self._backend.flush(timeout)

    def close(self) -> None:
        """Flush (the shared writer stays up for other objects on the same database)."""
        self._backend.flush()
