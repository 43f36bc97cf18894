"""``cmhash serve``: an HTTP search service over an index bundle (FastAPI + uvicorn).

The model and the index bundle are loaded once, at start-up, and checked against each other
(the model's fingerprint must be the bundle's). Endpoints:

* ``GET /health`` -- ``{"status": "ok"}``;
* ``GET /info`` -- method, model fingerprint, bits, index size, modalities, id type, limits;
* ``POST /query`` -- ``{"modality": "text", "vectors": [[...], ...], "k": 10}`` (feature
  vectors of a modality, encoded by the model) or ``{"codes": ["hex", ...], "k": 10}``
  (packed codes, ``2 * ceil(n_bits / 8)`` hex digits each, :func:`cmhash.codes.pack_codes`
  order); answers ``{"k", "model_fingerprint", "results": [{"ids": [...], "distances":
  [...]}, ...]}``, one result per query, ids as given to ``cmhash index build``.

Bad input is a 4xx answer ``{"detail": "<message>"}``: 400 for a wrong dimension, NaN or
infinite values, an unknown modality, k out of range, malformed codes; 413 for a body larger
than ``max_body_bytes`` or more than ``max_vectors`` queries; 422 (FastAPI's own, with the
location) for a body that is not a JSON object of the fields above. The limits
(:class:`ServiceLimits`) are set by ``cmhash serve`` options; defaults in docs/deployment.md.

FastAPI and uvicorn are imported only here and only when a service is created, so core cmhash
does not need them (``pip install 'cmhash[serve]'``). (No ``from __future__ import
annotations`` here: FastAPI reads the request model from the endpoint's real annotations.)
"""

import logging
import socket
import sys
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["ServiceLimits", "SearchService", "RequestError", "create_app", "run_server"]

log = logging.getLogger(__name__)

_MISSING_EXTRA = ("cmhash serve needs FastAPI and uvicorn, which are not installed: "
                  "pip install 'cmhash[serve]'")


@dataclass(frozen=True)
class ServiceLimits:
    """Per-request limits of the service."""

    #: largest request body in bytes (a 1,024 x 512 float batch in JSON is about 10 MiB)
    max_body_bytes: int = 16 * 2**20
    #: most query vectors (or codes) in one request
    max_vectors: int = 1024
    #: largest k
    max_k: int = 1000

    def __post_init__(self):
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


class RequestError(Exception):
    """A bad request: ``status`` (4xx) and a message naming the problem."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class SearchService:
    """The service's work, independent of HTTP: validate a query, encode, search.

    ``hasher`` is the fitted model, ``index`` the bundle's :class:`cmhash.HammingIndex`
    (checked by :func:`cmhash.cli_service.load_bundle`).
    """

    def __init__(self, hasher, index, limits: ServiceLimits | None = None, *,
                 model_name: str = "", index_name: str = ""):
        self.hasher = hasher
        self.index = index
        self.limits = limits or ServiceLimits()
        self.database_modality = index.metadata["modality"]
        self.fingerprint = index.model_fingerprint
        self._info = {
            "method": hasher.name, "model": model_name, "index": index_name,
            "model_fingerprint": self.fingerprint, "n_bits": index.n_bits,
            "size": index.ntotal, "database_modality": self.database_modality,
            "modalities": list(hasher.modality_names_),
            "n_features": {m: list(f) for m, f in zip(hasher.modality_names_,
                                                       hasher.n_features_)},
            "id_type": ("string" if index.has_ids and index.ids.dtype.kind == "U"
                        else "integer"),
            "code_hex_digits": 2 * index.code_size, "limits": asdict(self.limits)}

    def info(self) -> dict:
        return dict(self._info)

    def _check_k(self, k) -> int:
        if isinstance(k, bool) or not isinstance(k, int):
            raise RequestError(400, f"k must be an integer, got {k!r}")
        if not 1 <= k <= self.limits.max_k:
            raise RequestError(400, f"k must be between 1 and {self.limits.max_k} (the "
                                    f"service's limit), got {k}")
        return k

    def _check_count(self, m: int, what: str) -> None:
        if m == 0:
            raise RequestError(400, f"{what} is empty: send at least one query")
        if m > self.limits.max_vectors:
            raise RequestError(413, f"{m} {what} in one request; the limit is "
                                    f"{self.limits.max_vectors} (send several requests)")

    def _vectors_codes(self, modality, vectors):
        names = self.hasher.modality_names_
        if modality is None:
            raise RequestError(400, f"'modality' is required with 'vectors' (one of {names})")
        if modality not in names:
            raise RequestError(400, f"unknown modality {modality!r}; this model has {names}")
        self._check_count(len(vectors), "vectors")
        want = self.hasher.n_features_[names.index(modality)]
        if len(want) != 1:
            raise RequestError(400, f"modality {modality!r} takes inputs of shape {want}, "
                                    f"which the JSON API does not carry; send codes")
        lengths = {len(v) for v in vectors}
        if lengths != {want[0]}:
            bad = next(i for i, v in enumerate(vectors) if len(v) != want[0])
            raise RequestError(400, f"vectors[{bad}] has {len(vectors[bad])} values but "
                                    f"modality {modality!r} has {want[0]} features")
        X = np.asarray(vectors, dtype=np.float64)
        finite = np.isfinite(X).all(axis=1)
        if not finite.all():
            raise RequestError(400, f"vectors[{int(np.flatnonzero(~finite)[0])}] holds NaN or "
                                    f"infinite values ({int((~finite).sum())} such vector(s))")
        try:
            task = (modality, self.database_modality) if (
                len(names) == 2 and modality != self.database_modality) else None
            return self.hasher.encode(X, modality, task=task)
        except ValueError as exc:   # e.g. the model's own input checks
            raise RequestError(400, str(exc)) from None

    def _packed_codes(self, codes):
        from .codes import _check_packed

        self._check_count(len(codes), "codes")
        size = self.index.code_size
        packed = np.empty((len(codes), size), dtype=np.uint8)
        for i, text in enumerate(codes):
            if not isinstance(text, str) or len(text) != 2 * size:
                raise RequestError(400, f"codes[{i}] must be {2 * size} hex digits (a packed "
                                        f"{self.index.n_bits}-bit code), got {text!r:.80}")
            try:
                packed[i] = np.frombuffer(bytes.fromhex(text), dtype=np.uint8)
            except ValueError:
                raise RequestError(400, f"codes[{i}] is not hexadecimal: {text!r:.80}") from None
        try:
            return _check_packed(packed, "codes", self.index.n_bits)
        except ValueError as exc:
            raise RequestError(400, str(exc)) from None

    def query(self, *, k=10, modality=None, vectors=None, codes=None) -> dict:
        """Results of one request (see the module docstring), or a :class:`RequestError`."""
        k = self._check_k(k)
        if (vectors is None) == (codes is None):
            raise RequestError(400, "send either 'vectors' (with 'modality') or 'codes'")
        if vectors is not None:
            q = self._vectors_codes(modality, vectors)
            packed = False
        else:
            q = self._packed_codes(codes)
            packed = True
        distances, ids = self.index.search(q, k, packed=packed)
        return {"k": int(ids.shape[1]), "model_fingerprint": self.fingerprint,
                "results": [{"ids": ids[i].tolist(), "distances": distances[i].tolist()}
                            for i in range(ids.shape[0])]}


def _import_web():
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"{_MISSING_EXTRA} ({exc})") from exc


class _BodyLimit:
    """ASGI middleware: a 413 answer for a request body over ``max_bytes`` (by its
    Content-Length, or counted while it is read for a chunked body)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def _too_large(self):
        from fastapi import HTTPException

        return HTTPException(413, f"request body larger than {self.max_bytes} bytes (the "
                                  f"service's limit)")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            from fastapi.responses import JSONResponse

            response = JSONResponse({"detail": self._too_large().detail}, status_code=413)
            return await response(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()
            return message

        return await self.app(scope, limited, send)


def create_app(service: SearchService):
    """The FastAPI application of ``service``."""
    _import_web()
    from fastapi import FastAPI, HTTPException
    from pydantic import BaseModel, ConfigDict, Field

    class QueryRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        modality: str | None = Field(None, description="modality of 'vectors'")
        vectors: list[list[float]] | None = Field(None, description="query feature vectors")
        codes: list[str] | None = Field(None, description="packed query codes, hex")
        k: int = Field(10, strict=True, description="neighbours per query")

    app = FastAPI(title="cmhash search service", version="1",
                  description="Cross-modal Hamming search over one index bundle.")
    app.add_middleware(_BodyLimit, max_bytes=service.limits.max_body_bytes)

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.get("/info")
    def info():
        return service.info()

    @app.post("/query")
    def query(request: QueryRequest):   # a plain def: FastAPI runs it in its thread pool
        try:
            return service.query(k=request.k, modality=request.modality,
                                 vectors=request.vectors, codes=request.codes)
        except RequestError as exc:
            raise HTTPException(exc.status, str(exc)) from None

    return app


def load_service(index_path, model_path, limits: ServiceLimits | None = None) -> SearchService:
    """Load the model and the bundle once and check them against each other."""
    from .base import load
    from .cli_service import load_bundle

    hasher = load(model_path)
    index = load_bundle(index_path, hasher, model_path)
    return SearchService(hasher, index, limits, model_name=str(model_path),
                         index_name=str(index_path))


def run_server(index_path, model_path, *, host: str = "127.0.0.1", port: int = 8000,
               limits: ServiceLimits | None = None, log_level: str = "info") -> None:
    """Load, bind ``host:port`` (0: a free port), say where on stderr, serve until stopped
    (Ctrl-C / SIGTERM)."""
    _import_web()
    import uvicorn

    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"--port must be between 0 and 65535, got {port!r}")
    service = load_service(index_path, model_path, limits)
    app = create_app(service)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    bound = sock.getsockname()[1]
    info = service.info()
    # the model and index are loaded and the socket accepts connections: say so (tests and
    # scripts wait for this line instead of polling)
    print(f"cmhash serve: listening on http://{host}:{bound} ({info['size']} "
          f"{info['database_modality']} items, {info['n_bits']} bits, model "
          f"{info['model_fingerprint']})", file=sys.stderr, flush=True)
    if host not in ("127.0.0.1", "::1", "localhost"):
        log.warning("listening on %s: the service has no authentication", host)
    config = uvicorn.Config(app, log_level=log_level, access_log=log_level == "debug")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
