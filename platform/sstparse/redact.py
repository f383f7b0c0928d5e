"""Keep credentials out of everything this project writes down (MLflow params, checkpoint meta.json, logs).

Credentials belong in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, RAY_AUTH_TOKEN, ...). A user may
still put some in a config, e.g. ``data.storage_options: {key: ..., secret: ...}`` for a second bucket; the job
needs them in memory, but every copy that is persisted goes through :func:`redact` first.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
# Substrings of a key that mark its value as a credential; plus the exact names fsspec/s3fs use for them.
SECRET_HINTS = ("secret", "password", "passwd", "token", "access_key", "credential", "private_key", "api_key")
SECRET_KEYS = frozenset({"key", "secret", "token", "session_token", "sas_token", "account_key"})
# user:password@ in a URL (a PostgreSQL backend store, an MLflow server behind basic auth).
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]+):(?P<pw>[^@/\s]+)@")


def is_secret(key: str) -> bool:
    k = str(key).lower()
    return k in SECRET_KEYS or any(h in k for h in SECRET_HINTS)


def redact_text(text: str) -> str:
    """Mask the password of any ``scheme://user:password@host`` URL in ``text``."""
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}:{MASK}@", text)


def redact(obj: Any) -> Any:
    """A copy of a JSON-like structure with credential-looking keys masked and URL passwords removed."""
    if isinstance(obj, dict):
        return {k: (MASK if is_secret(k) and v not in (None, "", {}) else redact(v)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v) for v in obj)
    if isinstance(obj, str):
        return redact_text(obj)
    return obj
