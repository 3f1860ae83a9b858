"""A new version of a label set, learned from its corrections, scored over every kept embedding.

corrections + their kept embeddings + the text tower's vectors (as workers stored them)
-> producer/learn/choose (cross-validated) -> a learned label set (worker/db/learned.py)
-> `producer relabel`'s run over every kept embedding -> how many images changed label.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from producer import relabel as relabelling
from producer import status as reporting
from worker.core.errors import ConfigError
from worker.core.labels import LabelSet
from worker.core.settings import Settings
from worker.db import browse, corrections, embeddings, learned
from worker.db.labelsets import load_labelset
from worker.db.models import Model, served
from worker.db.schema import engine_for

CENTRE_SAMPLE = 5000  # kept embeddings averaged for the centre every image shares
SCALE = 100.0  # a trained checkpoint's logit scale, when the stored scores cannot tell
TOP_CHANGES = 50  # (before, after) pairs kept in a version's summary of changes


@dataclass(frozen=True)
class NewVersion:
    labelset: LabelSet
    root_id: str
    parent_id: str
    report: dict[str, Any]


def learn_version(settings: Settings, labelset_id: str) -> NewVersion:
    """Learn a new version of ``labelset_id``'s zero-shot label set from every correction made
    under it; stored, not scored yet. A ConfigError says what is missing."""
    import numpy as np  # here: the producer starts without NumPy

    from producer.learn.choose import learn
    from producer.learn.fit import Examples, Start

    engine = engine_for(settings.database_url)
    root_id = learned.root_of(engine, labelset_id)
    root = load_labelset(engine, root_id)
    model = served(settings)
    texts = learned.text_vectors(engine, model.id, root_id) if model else None
    if root is None or texts is None or texts[0] != len(root.labels):
        raise ConfigError(f"label set {root_id} has not been scored under {settings.model}: "
                          "tag or relabel images with it first")
    verdicts = [c for c in corrections.training_set(engine, root_id) if c.label in root.labels]
    assert model is not None  # texts were found under it
    kept = embeddings.lookup(engine, model, {c.content_sha256 for c in verdicts})
    usable = [c for c in verdicts if c.content_sha256 in kept]
    if not usable:
        raise ConfigError(f"no correction of label set {root_id} is on an image with a kept "
                          "embedding: correct some labels first (producer serve, or producer "
                          "corrections import)")
    index = {label: i for i, label in enumerate(root.labels)}
    groups = {sha: i for i, sha in enumerate(dict.fromkeys(c.content_sha256 for c in usable))}
    examples = Examples(np.stack([kept[c.content_sha256] for c in usable]).astype(np.float32),
                        np.array([index[c.label] for c in usable]),
                        np.array([c.verdict == "right" for c in usable]),
                        np.array([groups[c.content_sha256] for c in usable]))
    matrix = np.frombuffer(texts[2], np.float32).reshape(texts[0], texts[1])
    scale = _scale(engine, model.id, root_id, kept, matrix) or SCALE
    start = Start(matrix, scale, _centre(engine, model, examples.x))
    chosen = learn(start, examples)
    vectors = learned.Vectors(*chosen.vectors.shape, scale,
                              chosen.vectors.astype("<f4").tobytes())
    versions = learned.versions(engine, root_id)
    labelset = LabelSet(root.labels, root.parents, root.templates,
                        name=f"{root.name} learned {len(versions) + 1}",
                        learned=vectors.digest())
    parent = versions[0].labelset_id if versions else root_id
    chosen.report.update(without_embedding=len(verdicts) - len(usable), scale=round(scale, 3))
    learned.save(engine, labelset, root_id, parent, settings.model, chosen.method, vectors,
                 chosen.report)
    return NewVersion(labelset, root_id, parent, chosen.report)


def _scale(engine: Any, model_id: int, root_id: str, kept: dict[str, Any], texts: Any
           ) -> float | None:
    """The logit scale of the root's stored scores (see ``fit.logit_scale``)."""
    import numpy as np

    from producer.learn.fit import logit_scale

    with engine.connect() as conn:
        scores = browse.top_scores(conn, model_id, root_id, list(kept)[:200])
    if not scores:
        return None
    shas = list(scores)
    return logit_scale(np.stack([kept[s] for s in shas]).astype(np.float32), texts,
                       np.array([scores[s] for s in shas]))


def _centre(engine: Any, model: Model, fallback: Any) -> Any:
    """The mean of a sample of kept embeddings (the first batch by key: random by content)."""
    batch = next(embeddings.read_images(engine, embeddings.Scope(model), batch=CENTRE_SAMPLE),
                 None)
    vectors = batch[1] if batch is not None else fallback
    return vectors.astype("float32").mean(axis=0)


def learn_and_relabel(settings: Settings, labelset_id: str, *, timeout: float,
                      echo: Callable[[str], None]) -> dict[str, Any]:
    """Learn a version, score every kept embedding with it (with a worker of our own on the
    embedded default, else through the fleet's), then count the images that changed label."""
    version = learn_version(settings, labelset_id)
    echo(describe(version.report))
    if settings.embedded_broker:
        counts = relabelling.relabel_here(settings, version.labelset, scope_run=None,
                                          timeout=timeout, echo=echo)
        run_id = counts["run"]
    else:
        run_id = relabelling.relabel(settings, version.labelset).run_id
        echo(f"run {run_id}: relabelling with {version.labelset.id}")
        counts = reporting.wait(settings, run_id, timeout)
    engine = engine_for(settings.database_url)
    learned.set_run(engine, version.labelset.id, run_id)
    changes = count_changes(engine, version.labelset.id, run_id, version.parent_id)
    return {"labelset": version.labelset.id, "parent": version.parent_id, "run": run_id,
            "report": version.report, "changes": changes, "counts": counts}


def count_changes(engine: Any, labelset_id: str, run_id: str, parent_id: str
                  ) -> dict[str, Any]:
    """Images whose label changed from the parent version's, per label: stored with it."""
    with engine.connect() as conn:
        pairs = browse.change_counts(conn, run_id, parent_id)
    by_label: dict[str, int] = {}
    for _, after, n in pairs:
        by_label[after] = by_label.get(after, 0) + int(n)
    changes = {"images": sum(by_label.values()), "by_label": by_label,
               "pairs": [[b, a, int(n)] for b, a, n in pairs[:TOP_CHANGES]]}
    learned.set_changes(engine, labelset_id, changes)
    return changes


def describe(report: dict[str, Any]) -> str:
    """A learned version's measurement in one line."""
    agreement = report["agreement"]
    shown = {k: "-" if v is None else f"{100 * v:.1f}%" for k, v in agreement.items()}
    return (f"learned from {report['verdicts']} verdicts on {report['images']} images "
            f"({report['labels']} labels) by {report['method']} {report['value']:g}: "
            f"{report['folds']}-fold cross-validated agreement with reviewers "
            f"{shown['zero-shot']} zero-shot, {shown['learned']} learned; "
            f"{report['contradicted']} of their own verdicts contradicted")
