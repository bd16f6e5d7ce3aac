"""`dist-s2s serve`: the model behind HTTP, and a page to try it.

    dist-s2s serve --config configs/multi30k.yaml --checkpoint best [--host 127.0.0.1] [--port 8000]
    curl -s localhost:8000/translate -d '{"sentences": ["A dog runs."], "beam": 5, "nbest": 2}'

`POST /translate` takes `{"sentences": [...], "beam", "nbest", "length_penalty"}` (all but the sentences
optional: eval.beam_size, 1, eval.length_penalty) and answers `{"translations": [...]}` in the same order,
each with `text` and `score`, the `nbest` list when more than one was asked for, and with an attention
model the `alignment` (source and target pieces, weights). `GET /health` names the models, their
checkpoints' sha256 and the prepared data's manifest. `GET /` is the page (`page.html`). Every refusal is one
line of JSON, `{"error": ...}`, with its status: 400 for a body that is not UTF-8 JSON, 413 for more than
serve.max_sentences sentences or serve.max_chars characters in one, 422 for a field of the wrong kind,
503 when serve.max_queued sentences already wait. FastAPI and uvicorn: the ASGI pair MLflow and Ray's
dashboard already bring into the environment, so serving adds no dependency.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from dist_s2s.config import Config
from dist_s2s.data.manifest import MANIFEST, load_manifest
from dist_s2s.data.shards import sha256_file
from dist_s2s.decode.translator import Translation, Translator
from dist_s2s.device import pick_device
from dist_s2s.evaluate.attention import attention_weights
from dist_s2s.serve.batcher import Batcher, Options, Overloaded
from dist_s2s.train.checkpoint import load_checkpoint

log = logging.getLogger(__name__)

KERNEL_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
"""How many oneDNN kernels a process keeps, read when it makes its first (`dist-s2s serve` sets serve.kernel_cache)."""


class Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def create_app(config: Config, checkpoints: list[Path], translator: Translator | None = None) -> FastAPI:
    """The application for one model or an ensemble (several checkpoints)."""
    translator = translator or Translator(config, checkpoints, pick_device(config.train.device))
    serve = config.serve
    attention = translator.ensemble.models[0].attention is not None

    def decode(sources: list[list[int]], options: Options) -> list[list[Translation]]:
        found = translator.translate_ids(sources, options.beam, options.nbest, batch_size=serve.max_batch,
                                         length_penalty=options.length_penalty)
        if attention:  # in this thread too: one user of the model at a time
            for ids, hypotheses in zip(sources, found):
                hypotheses[0].alignment = _alignment(translator, ids, hypotheses[0]) if ids else None
        return found

    batcher = Batcher(decode, max_batch=serve.max_batch, batch_wait_s=serve.batch_wait_ms / 1000,
                      batch_max_wait_s=serve.batch_max_wait_ms / 1000, max_queued=serve.max_queued)
    health = _health(config, checkpoints, translator, attention)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await run_in_threadpool(batcher.close)

    app = FastAPI(title="dist-s2s", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.batcher = batcher

    @app.exception_handler(Refused)
    async def refused(request: Request, error: Refused) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=error.status,
                            headers={"Retry-After": "1"} if error.status == 503 else None)

    @app.exception_handler(Exception)
    async def failed(request: Request, error: Exception) -> JSONResponse:
        log.exception("serve: %s %s failed", request.method, request.url.path)
        return JSONResponse({"error": f"internal error ({type(error).__name__}); the server log has the details"},
                            status_code=500)

    @app.get("/health")
    async def get_health() -> dict[str, Any]:
        return {**health, "queued_sentences": batcher.queued_sentences, "batching": batcher.stats.as_dict()}

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return resources.files("dist_s2s.serve").joinpath("page.html").read_text(encoding="utf-8")

    @app.post("/translate")
    async def translate(request: Request) -> dict[str, Any]:
        sentences, options = _parse(await _body(request, serve), config)
        sources = await run_in_threadpool(lambda: [translator.source_ids(s) for s in sentences])
        try:
            job = batcher.submit(sources, options)
        except Overloaded as error:
            raise Refused(503, str(error)) from None
        answer, gone = asyncio.wrap_future(job.result), asyncio.ensure_future(_client_gone(request))
        await asyncio.wait([answer, gone], return_when=asyncio.FIRST_COMPLETED)
        if not answer.done():
            job.cancel()  # not decoded if its batch has not started
            return {"translations": []}
        gone.cancel()
        return {"translations": [_answer(found, options) for found in job.result.result()]}

    return app


async def _client_gone(request: Request) -> None:
    """Returns when the client hangs up: the server hears of it as it happens (no polling, which would take
    the interpreter from the decoding thread once per waiting request every few milliseconds)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _body(request: Request, serve) -> str:
    """The request body as text, refused when too large or not UTF-8."""
    limit = serve.max_sentences * (serve.max_chars * 4 + 16) + 4096  # every sentence at its longest, in UTF-8
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise Refused(413, f"request body over {limit} bytes (serve.max_sentences × serve.max_chars)")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Refused(400, f"request body is not valid UTF-8 (byte {error.start})") from None


def _parse(text: str, config: Config) -> tuple[list[str], Options]:
    """The sentences and decoding options of a request body, or the one reason it is refused."""
    try:
        request = json.loads(text)
    except json.JSONDecodeError as error:
        raise Refused(400, f"request body is not JSON: {error.msg} (line {error.lineno}, column {error.colno})") \
            from None
    if not isinstance(request, dict):
        raise Refused(422, 'the request must be a JSON object: {"sentences": [...]}')
    unknown = sorted(set(request) - {"sentences", "beam", "nbest", "length_penalty"})
    if unknown:
        raise Refused(422, f"unknown field {unknown[0]!r} (fields: sentences, beam, nbest, length_penalty)")
    sentences = request.get("sentences")
    if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
        raise Refused(422, "field 'sentences' must be a list of strings")
    serve = config.serve
    if len(sentences) > serve.max_sentences:
        raise Refused(413, f"{len(sentences)} sentences in one request; at most {serve.max_sentences} "
                           "(serve.max_sentences)")
    for index, sentence in enumerate(sentences):
        if len(sentence) > serve.max_chars:
            raise Refused(413, f"sentence {index} has {len(sentence)} characters; at most {serve.max_chars} "
                               "(serve.max_chars)")
    beam = _integer(request, "beam", min(config.eval.beam_size, serve.max_beam), low=1, high=serve.max_beam)
    nbest = _integer(request, "nbest", 1, low=1, high=beam)
    penalty = request.get("length_penalty", config.eval.length_penalty)
    if isinstance(penalty, bool) or not isinstance(penalty, int | float) or not 0 <= penalty <= 10:
        raise Refused(422, f"field 'length_penalty' must be a number from 0 to 10, got {penalty!r}")
    return sentences, Options(beam, nbest, float(penalty))


def _integer(request: dict, name: str, default: int, *, low: int, high: int) -> int:
    value = request.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        limit = " (serve.max_beam)" if name == "beam" else " (the beam)" if name == "nbest" else ""
        raise Refused(422, f"field {name!r} must be an integer from {low} to {high}{limit}, got {value!r}")
    return value


def _answer(found: list[Translation], options: Options) -> dict[str, Any]:
    best = found[0]
    answer: dict[str, Any] = {"text": best.text, "score": round(best.score, 4)}
    if options.nbest > 1:
        answer["nbest"] = [{"text": t.text, "score": round(t.score, 4)} for t in found]
    if best.alignment is not None:
        answer["alignment"] = best.alignment
    return answer


def _alignment(translator: Translator, src_ids: list[int], translation: Translation) -> dict[str, Any]:
    """Where the attention looked for each output piece: source pieces in reading order, target pieces with
    </s>, weights [target × source]."""
    weights = attention_weights(translator, src_ids, translation.ids)
    source = translator.src_codec.pieces(src_ids)
    if translator.prepared.reverse_source:
        source, weights = source[::-1], weights.flip(-1)
    target = [*translator.tgt_codec.pieces(translation.ids), "</s>"]
    return {"source": source, "target": target, "weights": [[round(float(w), 3) for w in row] for row in weights]}


def _health(config: Config, checkpoints: list[Path], translator: Translator, attention: bool) -> dict[str, Any]:
    """What is served: each checkpoint's file, sha256, step and model sizes; the manifest it decodes with."""
    models = []
    for path in checkpoints:
        state = load_checkpoint(path)
        model = state["config"]["model"]
        models.append({"checkpoint": str(path), "sha256": sha256_file(path), "step": state.get("step"),
                       "model": {key: model[key] for key in ("num_layers", "hidden_size", "embedding_dim",
                                                             "attention") if key in model}})
    manifest_path = Path(config.data.out_dir) / MANIFEST
    manifest = load_manifest(Path(config.data.out_dir))
    return {"status": "ok", "models": models, "attention": attention, "device": str(translator.device),
            "manifest": {"path": str(manifest_path), "sha256": sha256_file(manifest_path),
                         "config_hash": manifest.config_hash, "src_vocab": manifest.vocab.src_size,
                         "tgt_vocab": manifest.vocab.tgt_size},
            "limits": {key: getattr(config.serve, key) for key in ("max_sentences", "max_chars", "max_queued",
                                                                   "max_batch", "max_beam")},
            "kernel_cache": os.environ.get(KERNEL_CACHE_ENV, "oneDNN's default")}
