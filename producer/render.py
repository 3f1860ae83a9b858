"""What the commands print: status, runs and the closing summary of `producer tag`, as text."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from worker.core.errors import Skip
from worker.core.invocation import command

if TYPE_CHECKING:  # producer.tag writes a report, whose page uses counts() from here
    from producer.relabel import Relabelling
    from producer.tag import Tagged


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
    lines = [f"queue {report['queue']}: {report['queue_depth']} chunks waiting, "
             f"{report['reserved']} reserved",
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
    lines = [f"tagged {done} images, {failed} failed, in {result.seconds:.0f}s"
             + (f" (this run {result.summary.enqueued}; the rest were tagged before)"
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


def relabelling(sent: Relabelling, model: str) -> str:
    return (f"run {sent.run_id}: about {sent.images} images in {sent.ranges} ranges of kept "
            f"embeddings (model {model}); `producer wait --run {sent.run_id}` follows it")


def relabelled(counts: Mapping[str, Any], labelset_id: str) -> str:
    return (f"run {counts['run']}: relabelled {counts['done']} images with label set "
            f"{labelset_id}; `producer export --run {counts['run']}` writes their labels")
