"""MLflow stores for tests. A new sqlite store costs MLflow's schema migrations (2-3 s on 2 cores, more under
load) at its first use, paid again by every test that opens one; tests start instead from a copy of one migrated,
empty store made once per test process. (What a user's first run pays is unchanged: the README walk and the
MLflow server script create their stores as users do.)"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path


@functools.cache
def _template() -> Path:
    import mlflow

    folder = Path(tempfile.mkdtemp(prefix="sstparse-store-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    uri = f"sqlite:///{folder}/mlruns.db"
    mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).search_registered_models()  # both stores' tables
    return folder / "mlruns.db"


def sqlite_uri(folder: str | Path, name: str = "mlruns.db") -> str:
    """The URI of a sqlite store at ``folder/name``, a migrated empty one put there unless a store is there."""
    path = Path(folder) / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_template(), path)
    return f"sqlite:///{path}"
