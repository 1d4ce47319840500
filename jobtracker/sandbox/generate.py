"""Seeded generation of realistic job requests: model configs, inputs, ids, failure messages.

Everything draws from a caller-supplied ``random.Random`` so that a sandbox seeded the same way
produces the same jobs, byte for byte.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from typing import Any

from .jobs import COMPLETED, FAILED, SimJob

MODEL_NAMES = ("face", "prosody", "language", "burst", "ner", "facemesh")

#: Failure messages in the style of the real service (the first one is verbatim).
FAILURE_MESSAGES = (
    "user 'abcde' has exceeded their usage limit",
    "failed to download media from URL: 404 Not Found",
    "unsupported media type: could not decode input file",
    "job exceeded the maximum processing time of 3600 seconds",
    "no models were applicable to the provided inputs",
    "internal error while running inference; please resubmit the job",
)

_MEDIA = (
    ("video", "mp4", "video/mp4"),
    ("audio", "wav", "audio/wav"),
    ("audio", "mp3", "audio/mpeg"),
    ("image", "png", "image/png"),
    ("image", "jpg", "image/jpeg"),
    ("archive", "zip", "application/zip"),
    ("text", "txt", "text/plain"),
)
_WORDS = (
    "interview", "podcast", "keynote", "support-call", "focus-group", "vlog", "lecture",
    "standup", "review", "demo", "townhall", "webinar",
)  # fmt: skip
_SENTENCES = (
    "I can't believe how well this turned out.",
    "Honestly, I expected the meeting to go worse.",
    "Please call me back when you get this message.",
    "That was the most boring two hours of my life.",
    "We did it! The launch went perfectly.",
)

Json = dict[str, Any]


def random_job_id(rng: random.Random) -> str:
    """A version-4 UUID string drawn from ``rng`` (reproducible, unlike ``uuid.uuid4``)."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def model_config(name: str, rng: random.Random, *, legacy: bool = False) -> Json:
    """A raw config dict for model ``name`` as the API echoes it back in ``request.models``.

    Legacy face configs sometimes omit the optional keys, as the 2022 answers did; parsers must
    cope with both.
    """
    if name == "face":
        cfg: Json = {
            "fps_pred": rng.choice((3.0, 1.0, 5.0)),
            "identify_faces": rng.random() < 0.3,
            "min_face_size": rng.choice((60.0, 40.0, 80.0)),
            "prob_threshold": 0.9900000095367432 if legacy else 0.99,
        }
        if not legacy or rng.random() < 0.5:
            cfg.update(descriptions=None, facs=rng.choice((None, {})), save_faces=False)
        return dict(sorted(cfg.items()))
    if name == "prosody":
        window = None if rng.random() < 0.7 else {"length": 4.0, "step": 1.0}
        return {
            "granularity": rng.choice(("utterance", "word", "sentence", "conversational_turn")),
            "identify_speakers": rng.random() < 0.4,
            "window": window,
        }
    if name == "language":
        return {
            "granularity": rng.choice(("word", "sentence", "utterance", "passage")),
            "identify_speakers": rng.random() < 0.4,
            "sentiment": rng.choice((None, {})),
            "toxicity": rng.choice((None, {})),
        }
    if name == "ner":
        return {"identify_speakers": rng.random() < 0.4}
    if name in ("burst", "facemesh"):
        return {}
    raise ValueError(f"unknown model {name!r}; expected one of {MODEL_NAMES}")


def random_models(
    rng: random.Random, *, legacy: bool = False, names: Sequence[str] | None = None
) -> dict[str, Json]:
    """Configs for exactly ``names``, or for 1-3 models picked at random."""
    chosen = list(names) if names is not None else rng.sample(MODEL_NAMES, rng.randint(1, 3))
    return {name: model_config(name, rng, legacy=legacy) for name in sorted(chosen)}


def _media_name(rng: random.Random) -> tuple[str, str, str]:
    kind, ext, content_type = rng.choice(_MEDIA)
    return kind, f"{rng.choice(_WORDS)}-{rng.randint(1, 9999):04d}.{ext}", content_type


def random_inputs(rng: random.Random) -> tuple[list[str], list[dict[str, str]], list[str]]:
    """1-2 URLs, sometimes uploaded ``files`` entries and inline ``text`` entries."""
    urls = []
    for _ in range(rng.randint(1, 2)):
        kind, name, _ = _media_name(rng)
        urls.append(f"https://media.example.com/{kind}/{name}")
    files = []
    if rng.random() < 0.25:
        for _ in range(rng.randint(1, 2)):
            _, name, content_type = _media_name(rng)
            md5 = f"{rng.getrandbits(128):032x}"
            files.append({"filename": name, "md5sum": md5, "content_type": content_type})
    text = rng.sample(_SENTENCES, rng.randint(1, 2)) if rng.random() < 0.15 else []
    return urls, files, text


def random_job(
    rng: random.Random,
    job_id: str,
    *,
    created_ms: int,
    queue_s: tuple[float, float],
    run_s: tuple[float, float],
    legacy: bool,
    failed: bool,
    models: Sequence[str] | None = None,
) -> SimJob:
    """Draw one complete job (request, schedule, outcome) from ``rng``."""
    urls, files, text = random_inputs(rng)
    if legacy:
        # The legacy API only took URLs.
        files, text = [], []
    callback_url = None
    if rng.random() < 0.2:
        callback_url = f"https://hooks.example.com/hume/{rng.getrandbits(32):08x}"
    num_inputs = len(urls) + len(files) + len(text)
    return SimJob(
        job_id=job_id,
        created_ms=created_ms,
        queue_ms=round(rng.uniform(*queue_s) * 1000),
        run_ms=round(rng.uniform(*run_s) * 1000),
        final_status=FAILED if failed else COMPLETED,
        error=rng.choice(FAILURE_MESSAGES) if failed else None,
        models=random_models(rng, legacy=legacy, names=models),
        urls=urls,
        files=files,
        text=text,
        callback_url=callback_url,
        notify=rng.random() < 0.3,
        legacy=legacy,
        num_predictions=num_inputs * rng.randint(1, 12),
        num_errors=rng.randint(1, num_inputs) if rng.random() < 0.15 else 0,
    )
