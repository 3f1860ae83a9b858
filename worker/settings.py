"""One typed settings object, read from the environment in one place."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "OFA-Sys/chinese-clip-vit-base-patch16"
DEFAULT_LABELS = Path(__file__).parent / "labelsets" / "ecommerce_zh.txt"
TASK_NAME = "tagger.tag_chunk"


class SettingsError(ValueError):
    """A configuration value is missing or malformed."""


@dataclass(frozen=True)
class Settings:
    """Everything the producer and the workers can be told from outside."""

    home: Path
    broker_url: str
    database_url: str
    queue: str
    model: str
    labels_path: Path
    templates_path: Path | None
    device: str
    dtype: str
    top_k: int
    batch_size: int
    chunk_size: int
    decode_threads: int
    visibility_timeout: int
    chunk_retries: int
    max_deliveries: int
    max_image_bytes: int
    max_image_pixels: int
    fetch_timeout: float
    allow_private_urls: bool
    url_allow_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    pending_ttl: int
    metrics_port: int
    jpeg_draft: bool
    decode_overlap: str = "auto"  # decode during forward passes: auto = on GPU only

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url.startswith("filesystem://")

    @property
    def broker_folder(self) -> Path:
        return self.home / "broker"

    @property
    def max_retry_countdown(self) -> int:
        # A countdown longer than the visibility timeout would make Redis deliver it twice.
        return max(1, min(60, self.visibility_timeout // 4))

    @property
    def task_time_limit(self) -> int:
        # The hard limit must end a task before Redis re-delivers its message to another worker.
        return max(10, int(self.visibility_timeout * 0.8))


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be >= {minimum}, got {value}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


def _networks(env: Mapping[str, str], name: str
              ) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    parts = [p.strip() for p in env.get(name, "").split(",") if p.strip()]
    try:
        return tuple(ipaddress.ip_network(p) for p in parts)
    except ValueError as exc:
        raise SettingsError(f"{name} must be a comma-separated list of CIDR networks: {exc}"
                            ) from None


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    value = env.get(name, "auto").strip().lower() or "auto"
    if value not in choices and not (name == "TAGGER_DEVICE" and value.startswith("cuda:")):
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read settings from ``env`` (default: the process environment), failing fast."""
    env = os.environ if env is None else env
    home = Path(env.get("TAGGER_HOME", ".tagger")).expanduser().absolute()
    templates = env.get("TAGGER_TEMPLATES", "").strip()
    return Settings(
        home=home,
        broker_url=env.get("CELERY_BROKER_URL", "").strip() or "filesystem://",
        database_url=env.get("DATABASE_URL", "").strip() or f"sqlite:///{home / 'results.db'}",
        queue=env.get("TAGGER_QUEUE", "").strip() or "tagger",
        model=env.get("TAGGER_MODEL", "").strip() or DEFAULT_MODEL,
        labels_path=Path(env.get("TAGGER_LABELS", "").strip() or DEFAULT_LABELS),
        templates_path=Path(templates) if templates else None,
        device=_choice(env, "TAGGER_DEVICE", ("auto", "cpu", "cuda")),
        dtype=_choice(env, "TAGGER_DTYPE", ("auto", "float32", "float16", "bfloat16")),
        top_k=_int(env, "TAGGER_TOP_K", 5, minimum=1),
        batch_size=_int(env, "TAGGER_BATCH_SIZE", 0),
        chunk_size=_int(env, "TAGGER_CHUNK_SIZE", 64, minimum=1),
        decode_threads=_int(env, "TAGGER_DECODE_THREADS", os.cpu_count() or 2, minimum=1),
        visibility_timeout=_int(env, "TAGGER_VISIBILITY_TIMEOUT", 900, minimum=5),
        chunk_retries=_int(env, "TAGGER_CHUNK_RETRIES", 8),
        max_deliveries=_int(env, "TAGGER_MAX_DELIVERIES", 3, minimum=1),
        max_image_bytes=_int(env, "TAGGER_MAX_IMAGE_BYTES", 50 * 1024 * 1024, minimum=1),
        max_image_pixels=_int(env, "TAGGER_MAX_IMAGE_PIXELS", 89_478_485, minimum=1),
        fetch_timeout=float(_int(env, "TAGGER_FETCH_TIMEOUT", 30, minimum=1)),
        allow_private_urls=_bool(env, "TAGGER_ALLOW_PRIVATE_URLS", False),
        url_allow_networks=_networks(env, "TAGGER_URL_ALLOW_NETWORKS"),
        pending_ttl=_int(env, "TAGGER_PENDING_TTL", 24 * 3600, minimum=1),
        metrics_port=_int(env, "TAGGER_METRICS_PORT", 0),
        jpeg_draft=_bool(env, "TAGGER_JPEG_DRAFT", True),
        decode_overlap=_choice(env, "TAGGER_DECODE_OVERLAP", ("auto", "on", "off")),
    )


def redact(url: str) -> str:
    """Hide the password in a connection URL before it is logged."""
    from kombu.utils.url import maybe_sanitize_url

    return maybe_sanitize_url(url, mask="***")
