"""What the commands print: status, runs and the closing summary of `producer tag`, as text."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker.core.errors import Skip
from worker.core.invocation import command

if TYPE_CHECKING:
    from producer.outcomes import Relabelling, Tagged


def plural(count: int, noun: str) -> str:
    """``1 chunk``, ``2 chunks``, ``0 chunks``."""
    return f"{count} {noun}" + ("" if count == 1 else "s")


def counts(mapping: Mapping[str, int]) -> str:
    """``5 not-found, 2 undecodable``, largest first."""
    return ", ".join(f"{n} {k}" for k, n in sorted(mapping.items(), key=lambda kv: -kv[1]))


def weights(counts: Mapping[str, int]) -> str:
    """``weights 0123456789ab``, or with counts when results came from several."""
    if not counts:
        return "weights -"
    if len(counts) == 1:
        return f"weights {next(iter(counts))}"
    return "weights " + ", ".join(f"{digest} ({n})" for digest, n in counts.items())


def status(report: Mapping[str, Any]) -> str:
    lines = [f"queue {report['queue']}: {plural(report['queue_depth'], 'chunk')} waiting, "
             f"{report['reserved']} reserved; backlog {report['backlog']} images",
             f"images: {report['done']} done, {report['failed']} failed, {report['pending']} "
             f"pending ({report['in_flight']} in flight)",
             f"  {weights(report['weights'])}"]
    if report["failed_by_reason"]:
        lines.append(f"  failed: {counts(report['failed_by_reason'])}")
    eta = report["eta_seconds"]
    lines.append(f"rate: {report['images_per_second']} images/s over the last 5 min"
                 + (f", ETA {eta // 60} min {eta % 60} s" if eta else ""))
    if report["run"]:
        lines.append(run(report["run"]))
    return "\n".join(lines)


def run(info: Mapping[str, Any]) -> str:
    lines = [f"run {info['id']} [{info['state']}] {info['source']}",
             f"  model {info['model']}, {weights(info['weights'])}, label set "
             f"{info['labelset_id']}, started "
             f"{info['started_at']}"
             + (f", listing ended {info['finished_at']}" if info["finished_at"] else ""),
             f"  listed {info['listed']}, enqueued {info['enqueued']}, skipped {info['skipped']}"
             + (f" ({counts(info['skipped_by_reason'])})" if info["skipped_by_reason"] else ""),
             f"  done {info['done']}, failed {info['failed']}, pending {info['pending']}"
             + (f"; failed: {counts(info['failed_by_reason'])}"
                if info["failed_by_reason"] else "")]
    if info.get("error"):
        lines.append(f"  stopped early: {info['error']}")
    return "\n".join(lines)


def failed_before(skipped: Mapping[str, int], retry: str) -> str | None:
    """Images skipped because they failed before, and the command that tries them again."""
    count = skipped.get(Skip.FAILED.value, 0)
    images = "1 image" if count == 1 else f"{count} images"
    return (f"{images} failed in an earlier run and were not tried again: `{retry}` tries "
            f"{'it' if count == 1 else 'them'} again") if count else None


def tagged(result: Tagged, location: str) -> str:
    done, failed = result.by_status["done"], result.by_status["failed"]
    others = result.summary.in_flight_runs
    rest = (f"the rest by run {', '.join(others)} or before" if others
            else "the rest were tagged before")
    lines = [f"tagged {done} images, {failed} failed, in {result.seconds:.0f}s"
             + (f" (this run {result.summary.enqueued}; {rest})"
                if result.summary.enqueued != done + failed else "")]
    if result.failed_by_reason:
        lines.append(f"  failed: {counts(result.failed_by_reason)}")
    again = failed_before(result.summary.skipped_by_reason,
                          f"{command('producer')} tag {shlex.quote(location)} --retry-failed")
    if again:
        lines.append(f"  {again}")
    if result.top_labels:
        top = ", ".join(f"{label} {n}" for label, n in result.top_labels.most_common(8))
        lines.append(f"  top labels: {top}")
    lines.append(f"labels of {result.exported} images: {result.output}")
    if result.report:
        lines.append(f"report: {result.report}")
    return "\n".join(lines)


def exported(count: int, kind: str, output: Path | None, left_out: int = 0) -> str:
    return (f"exported {count} {kind}" + (f" to {output}" if output else "")
            + (f"; {left_out} corrupt embeddings left out (`producer relabel` fails their images "
               "as corrupt-embedding)" if left_out else ""))


def relabelling(sent: Relabelling, model: str) -> str:
    return (f"run {sent.run_id}: {kept(sent)} (model {model}); `producer wait --run "
            f"{sent.run_id}` follows it"
            + (f"\n{taken_over(sent.taken_over)}" if sent.taken_over else ""))


def kept(sent: Relabelling) -> str:
    """What a relabel run scores: a run's images, or kept embeddings, one per content (images
    with the same bytes share one, so more images than that may get labels)."""
    what = (plural(sent.images, "image") if sent.scope_run else
            f"{plural(sent.images, 'kept embedding')} (one per distinct image content)")
    return f"{what} in {plural(sent.ranges, 'range')}"


def taken_over(runs: Mapping[str, int]) -> str:
    """Earlier relabel runs whose unanswered ranges a new run took over."""
    return "took over what was left of " + ", ".join(
        f"run {run} (about {images} images, unanswered for over TAGGER_PENDING_TTL)"
        for run, images in runs.items())


def relabelled(counts: Mapping[str, Any], labelset_id: str) -> str:
    return (f"run {counts['run']}: relabelled {counts['done']} images with label set "
            f"{labelset_id}; `producer export --run {counts['run']}` writes their labels")


def learned(done: Mapping[str, Any], measured: str) -> str:
    """What `producer relabel --learn` did: the version, its measurement, the images changed."""
    changes = done["changes"]
    most = sorted(changes["by_label"].items(), key=lambda pair: (-pair[1], pair[0]))
    shown = ", ".join(f"{label} {n}" for label, n in most[:10])
    return (f"label set {done['labelset']} (a new version of {done['parent']}): {measured}\n"
            f"run {done['run']}: relabelled {done['counts']['done']} images; "
            f"{changes['images']} changed label" + (f" (now: {shown})" if shown else "")
            + "; `producer serve` lists them to review next")
