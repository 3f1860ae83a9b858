"""One typed settings object, read from the environment in one place, failing fast."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from worker.core import plugins
from worker.core.errors import ConfigError
from worker.core.options import Options, read_options
from worker.core.parse import Choice, Integer, Network, boolean, networks, paths
from worker.core.registry import PRIMARY_SINK, seam

APP_NAME = "catalog-tagger"
DEFAULT_MODEL = "OFA-Sys/chinese-clip-vit-base-patch16"
LABELSETS = Path(__file__).resolve().parents[1] / "labelsets"
DEFAULT_LABELS = LABELSETS / "ecommerce_zh.txt"
DATABASES = {"sqlite": "sqlite", "postgresql": "postgresql", "postgres": "postgresql",
             "postgresql+psycopg2": "postgresql"}
BROKERS = ("redis", "rediss", "filesystem")
MIN_GROUP = 16  # images: Settings.group_size


@dataclass(frozen=True)
class Settings:
    """Everything the producer and the workers can be told from outside."""

    home: Path
    cache_dir: Path
    index_dir: Path  # the search index (worker/search): derived from the database, rebuildable
    broker_url: str
    database_url: str
    queue: str
    model: str
    labels_path: Path
    templates_path: Path | None
    backend: str
    precision: str
    device: str
    decoder: str
    sinks: tuple[str, ...]
    top_k: int
    batch_size: int
    chunk_size: int
    decode_processes: int
    visibility_timeout: int
    chunk_retries: int
    max_deliveries: int
    max_image_bytes: int
    max_image_pixels: int
    max_image_memory: int
    item_timeout: float
    fetch_timeout: float
    allow_private_urls: bool
    url_allow_networks: tuple[Network, ...]
    file_roots: tuple[Path, ...]
    pending_ttl: int
    read_timeout: int
    metrics_port: int
    jpeg_draft: bool
    decode_overlap: str
    keep_embeddings: bool
    owner_pid: int
    serve_token: str = field(repr=False)  # the workbench's reviewers (producer/workbench)
    plugins: tuple[str, ...] = ()  # TAGGER_PLUGINS: modules that registered parts
    options: tuple[Options, ...] = ()  # each part's own settings (TAGGER_<PART>_*)

    def part(self, name: str) -> Options:
        """The settings the part registered as (or prefixed) ``name`` declares; none if none."""
        return next((o for o in self.options if o.part == name), Options(name))

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url.startswith("filesystem://")

    @property
    def default_database(self) -> bool:
        """The embedded results database under TAGGER_HOME, created when first needed."""
        return self.database_url == default_database_url(self.home)

    @property
    def broker_folder(self) -> Path:
        return self.home / "broker"

    @property
    def max_retry_countdown(self) -> int:
        # A countdown longer than the visibility timeout would make Redis deliver it twice.
        return max(1, min(60, self.visibility_timeout // 4))

    def decode_processes_per(self, model_processes: int) -> int:
        """Decode processes of each of a worker's ``model_processes`` (prefork -c K): as set, or
        twice the host's cores between them. Each fetches, hashes and decodes one image at a
        time: twice the cores keeps them busy while some wait on the network."""
        if self.decode_processes:
            return self.decode_processes
        return max(1, 2 * (os.cpu_count() or 1) // max(1, model_processes))

    def group_size(self, batch_size: int) -> int:
        """Images of a chunk handed on to the model together: a quarter of a chunk (16 at
        least: a decode call and a forward pass each), so that its later images decode while its
        first ones are encoded; never more than a batch. (A GPU's batch, up to 512, waited for a
        whole chunk: fetch, decode, encode and write in turn.)"""
        return max(1, min(batch_size, max(MIN_GROUP, -(-self.chunk_size // 4))))

    @property
    def task_time_limit(self) -> int:
        # The hard limit must end a task before Redis re-delivers its message to another worker.
        return max(10, int(self.visibility_timeout * 0.8))


# --- parsers: (variable name, raw text) -> value, or ConfigError (more in worker/core/parse.py)

def _registered(kind: str) -> Callable[[str, str], str]:
    """A name from a seam's registry (the one list of its names), or ``auto``."""
    def parse(name: str, raw: str) -> str:
        return seam(kind).check(name, raw, also=("auto",))
    return parse


def _precision(name: str, raw: str) -> str:
    """``auto`` or a precision some registered backend declares."""
    declared = (getattr(part, "precisions", ()) for part in seam("backend").parts().values())
    return Choice("auto", *dict.fromkeys(p for group in declared for p in group))(name, raw)


def _sinks(name: str, raw: str) -> tuple[str, ...]:
    names = tuple(seam("sink").check(name, part) for part in raw.split(",") if part.strip())
    if PRIMARY_SINK not in names:
        raise ConfigError(f"{name} must include {PRIMARY_SINK} (it records what is done, "
                          f"pending and in flight), got {raw!r}")
    return (PRIMARY_SINK, *(n for n in dict.fromkeys(names) if n != PRIMARY_SINK))


def _queue(name: str, raw: str) -> str:
    if not re.fullmatch(r"[0-9A-Za-z_.-]{1,64}", raw):
        raise ConfigError(f"{name} must be 1 to 64 letters, digits, '.', '_' or '-', got {raw!r}")
    return raw


def _model(name: str, raw: str) -> str:
    """A hub id as given; a local folder as its canonical path, the same from any directory
    (the model is part of every result's identity and names its queue)."""
    path = Path(raw).expanduser()
    if raw.startswith((".", "/", "~")) or path.is_dir():
        return os.path.realpath(path)
    return raw


def database_url(name: str, raw: str) -> str:
    """A PostgreSQL or SQLite URL, or a one-line ConfigError naming the variable."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        driver = make_url(raw).drivername
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        shown = raw.rpartition("@")[2] if "@" in raw else raw  # never the password
        raise ConfigError(f"{name} is not a database URL ({shown[:40]!r}): use "
                          "postgresql://user:password@host/db or sqlite:///path/results.db"
                          ) from None
    if driver not in DATABASES:
        raise ConfigError(f"{name}: {driver!r} databases are not supported; use "
                          "postgresql://user:password@host/db or sqlite:///path/results.db")
    return raw


def _broker_url(name: str, raw: str) -> str:
    if raw.partition("://")[0] not in BROKERS:
        raise ConfigError(f"{name} must be a redis:// URL (or filesystem:// for one machine), "
                          f"got {raw.partition('://')[0]!r}")
    return raw


# Variable, field, parser, default (a value, or a function of the home folder).
_FIELDS: tuple[tuple[str, str, Callable[[str, str], Any], Any], ...] = (
    ("TAGGER_QUEUE", "queue", _queue, "tagger"),
    ("TAGGER_MODEL", "model", _model, DEFAULT_MODEL),
    ("TAGGER_BACKEND", "backend", _registered("backend"), "auto"),
    ("TAGGER_PRECISION", "precision", _precision, "auto"),
    ("TAGGER_DEVICE", "device", Choice("auto", "cpu", "cuda", prefixes=("cuda:",)), "auto"),
    ("TAGGER_DECODER", "decoder", _registered("decoder"), "auto"),
    ("TAGGER_SINKS", "sinks", _sinks, (PRIMARY_SINK,)),
    ("TAGGER_TOP_K", "top_k", Integer(1), 5),
    ("TAGGER_BATCH_SIZE", "batch_size", Integer(0), 0),
    ("TAGGER_CHUNK_SIZE", "chunk_size", Integer(1), 64),
    # Per model process; 0: twice the host's cores shared by its model processes
    # (Settings.decode_processes_per).
    ("TAGGER_DECODE_PROCESSES", "decode_processes", Integer(1), 0),
    ("TAGGER_VISIBILITY_TIMEOUT", "visibility_timeout", Integer(5), 900),
    ("TAGGER_CHUNK_RETRIES", "chunk_retries", Integer(0), 8),
    ("TAGGER_MAX_DELIVERIES", "max_deliveries", Integer(1), 3),
    ("TAGGER_MAX_IMAGE_BYTES", "max_image_bytes", Integer(1), 50 * 2**20),
    ("TAGGER_MAX_IMAGE_PIXELS", "max_image_pixels", Integer(1), 89_478_485),
    ("TAGGER_MAX_IMAGE_MEMORY", "max_image_memory", Integer(16 * 2**20), 2**30),
    ("TAGGER_ITEM_TIMEOUT", "item_timeout", Integer(1), 30),
    ("TAGGER_FETCH_TIMEOUT", "fetch_timeout", Integer(1), 30),
    ("TAGGER_ALLOW_PRIVATE_URLS", "allow_private_urls", boolean, False),
    ("TAGGER_URL_ALLOW_NETWORKS", "url_allow_networks", networks, ()),
    ("TAGGER_FILE_ROOTS", "file_roots", paths, ()),
    ("TAGGER_PENDING_TTL", "pending_ttl", Integer(1), 24 * 3600),
    # Seconds one read of kept embeddings may run (a batch of a relabel range, of an export).
    ("TAGGER_READ_TIMEOUT", "read_timeout", Integer(1), 60),
    ("TAGGER_METRICS_PORT", "metrics_port", Integer(0), 0),
    ("TAGGER_JPEG_DRAFT", "jpeg_draft", boolean, True),
    ("TAGGER_DECODE_OVERLAP", "decode_overlap", Choice("auto", "on", "off"), "auto"),
    ("TAGGER_KEEP_EMBEDDINGS", "keep_embeddings", boolean, True),
    # Set by `producer tag` on the worker it starts: the worker stops when that process is gone.
    ("TAGGER_OWNER_PID", "owner_pid", Integer(0), 0),
    ("TAGGER_SERVE_TOKEN", "serve_token", lambda name, raw: raw, ""),
)


def default_database_url(home: Path) -> str:
    return f"sqlite:///{home / 'results.db'}"


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read settings from ``env`` (default: the process environment), failing fast."""
    env = os.environ if env is None else env
    # First: the parts they register are checked and configured like the built-in ones.
    named = plugins.load("TAGGER_PLUGINS", env.get("TAGGER_PLUGINS", ""))
    values: dict[str, Any] = {}
    for variable, name, parse, default in _FIELDS:
        raw = env.get(variable, "").strip()
        values[name] = parse(variable, raw) if raw else default
    home = Path(env.get("TAGGER_HOME", "").strip()
                or platformdirs.user_data_dir(APP_NAME)).expanduser().absolute()
    cache = env.get("TAGGER_CACHE_DIR", "").strip()
    index = env.get("TAGGER_INDEX_DIR", "").strip()
    templates = env.get("TAGGER_TEMPLATES", "").strip()
    broker = env.get("CELERY_BROKER_URL", "").strip()
    database = env.get("DATABASE_URL", "").strip()
    return Settings(
        home=home,
        cache_dir=Path(cache or platformdirs.user_cache_dir(APP_NAME)).expanduser().absolute(),
        index_dir=Path(index or home / "index").expanduser().absolute(),
        broker_url=_broker_url("CELERY_BROKER_URL", broker) if broker else "filesystem://",
        database_url=(database_url("DATABASE_URL", database) if database
                      else default_database_url(home)),
        labels_path=Path(env.get("TAGGER_LABELS", "").strip() or DEFAULT_LABELS),
        templates_path=Path(templates) if templates else None,
        plugins=named,
        options=read_options(env),
        **values,
    )


