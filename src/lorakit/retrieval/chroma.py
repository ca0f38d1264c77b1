"""The ``"chroma"`` store: the dense vectors on a Chroma server, through its HTTP API.

Start a server (``pip install chromadb``; ``chroma run --path DATA --host 127.0.0.1 --port
8000``) and build with ``lorakit index build SOURCE --out DIR --store chroma --store-option
url=http://127.0.0.1:8000``. The index folder keeps its card, passages, BM25 files and
``vectors.npy`` (incremental builds reuse them); the server holds one collection per build
(cosine by inner product, HNSW), named ``lorakit-`` and the hash of the vectors. lorakit talks
to the server's REST API (v2) with the standard library: the ``chromadb`` package is needed
only where the server runs.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lorakit.errors import ConfigError, LorakitError
from lorakit.retrieval.stores import VectorStore

__all__ = ["ChromaStore"]

_API = "/api/v2/tenants/{tenant}/databases/{database}"
_BATCH = 1000


class _Client:
    def __init__(self, url: str, tenant: str, database: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.base = self.url + _API.format(tenant=tenant, database=database)
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:300]
            raise LorakitError(
                f"the Chroma server answered {exc.code}: {detail}",
                file=self.url,
                field="store",
                hint="check the server's version (lorakit speaks the v2 API of Chroma 1.x)",
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            raise LorakitError(
                f"cannot reach the Chroma server ({getattr(exc, 'reason', exc)})",
                file=self.url,
                field="store",
                hint="start it with: chroma run --path DATA --host 127.0.0.1 --port 8000",
            ) from None


class _ChromaVectors:
    def __init__(self, client: _Client, collection_id: str) -> None:
        self.client = client
        self.collection_id = collection_id

    def search(self, vector: Any, k: int) -> list[tuple[int, float]]:
        got = self.client.call(
            "POST",
            f"/collections/{self.collection_id}/query",
            {
                "query_embeddings": [[float(x) for x in vector]],
                "n_results": k,
                "include": ["distances"],
            },
        )
        # inner-product distance is 1 - cosine for unit vectors
        return [
            (int(i), 1.0 - float(d))
            for i, d in zip(got["ids"][0], got["distances"][0], strict=True)
        ]


class ChromaStore:
    """Writes the vectors to a collection of a Chroma server and searches them there.

    Options: ``url`` (required), ``tenant`` (``default_tenant``), ``database``
    (``default_database``).
    """

    def write(
        self,
        folder: Path,
        vectors: Any,
        passage_ids: Sequence[str],
        options: Mapping[str, str],
    ) -> dict[str, Any]:
        import hashlib

        unknown = set(options) - {"url", "tenant", "database"}
        if unknown or "url" not in options:
            raise ConfigError(
                "the chroma store needs --store-option url=http://HOST:PORT"
                + (f" (unknown options: {', '.join(sorted(unknown))})" if unknown else ""),
                field="store_options",
            )
        settings = {
            "url": options["url"],
            "tenant": options.get("tenant", "default_tenant"),
            "database": options.get("database", "default_database"),
        }
        client = _Client(settings["url"], settings["tenant"], settings["database"])
        name = "lorakit-" + hashlib.sha256(vectors.tobytes()).hexdigest()[:24]
        if self._exists(client, name):
            client.call("DELETE", f"/collections/{name}")
        created = client.call(
            "POST",
            "/collections",
            {"name": name, "configuration": {"hnsw": {"space": "ip"}}, "get_or_create": False},
        )
        collection_id = str(created["id"])
        for start in range(0, len(vectors), _BATCH):
            chunk = vectors[start : start + _BATCH]
            client.call(
                "POST",
                f"/collections/{collection_id}/add",
                {
                    "ids": [str(start + i) for i in range(len(chunk))],
                    "embeddings": [[float(x) for x in row] for row in chunk],
                },
            )
        return {**settings, "collection": name, "collection_id": collection_id}

    @staticmethod
    def _exists(client: _Client, name: str) -> bool:
        try:
            client.call("GET", f"/collections/{name}")
        except LorakitError as exc:
            if "404" in exc.message or "NotFound" in exc.message:
                return False
            raise
        return True

    def open(self, folder: Path, settings: Mapping[str, Any]) -> VectorStore:
        for key in ("url", "tenant", "database", "collection_id"):
            if not isinstance(settings.get(key), str):
                raise LorakitError(
                    "the card's chroma settings lack a text value",
                    file=str(folder / "card.json"),
                    field=f"store_settings.{key}",
                    hint="rebuild the index",
                )
        client = _Client(settings["url"], settings["tenant"], settings["database"])
        return _ChromaVectors(client, settings["collection_id"])
