"""Which state store a gateway uses: the SQLite one (fraudguard.serving.state) or the Redis one
(fraudguard.serving.redis_state), as `serve.state.backend` names. Apart from both so that neither store module
depends on the other."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from fraudguard.config import FeaturizeSettings
from fraudguard.serving.state import REDIS_URL_ENV, FeatureStore, StateStore

if TYPE_CHECKING:
    from fraudguard.config import ServeSettings


def open_state_store(serve: "ServeSettings", featurize: FeaturizeSettings, root: Path,
                     env: Mapping[str, str] | None = None) -> StateStore:
    """The store `serve.state.backend` names: the SQLite file at serve.state_path (relative to root) or Redis
    at $FRAUDGUARD_REDIS_URL, else serve.state.redis_url."""
    import os

    if serve.state.backend == "redis":
        from fraudguard.serving.redis_state import RedisFeatureStore

        env = os.environ if env is None else env
        return RedisFeatureStore(env.get(REDIS_URL_ENV) or serve.state.redis_url, serve.state, featurize)
    path = serve.state_path if serve.state_path.is_absolute() else Path(root) / serve.state_path
    return FeatureStore(path, featurize)
