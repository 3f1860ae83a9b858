"""The benchmark's printed table and JSON: every figure of one run, with its command."""

from __future__ import annotations

import argparse
import json
import os
import platform
from typing import Any

import torch

from worker.core.settings import Settings


def machine(settings: Settings, backend: Any, decoder: Any) -> dict[str, Any]:
    return {"device": backend.device, "decoder": decoder.name, "batch_size": backend.batch_size,
            "chunk_size": settings.chunk_size,
            "decode_processes": settings.decode_processes_per(1),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name() if backend.device.startswith("cuda") else None}


def _ratios(rows: list[dict[str, Any]], info: dict[str, Any]) -> None:
    fastest = max(row["tower"] for row in rows)
    for row in rows:
        decode = info["decode"][row["corpus"]]
        row["decode"] = decode
        row["bound"] = 1 / (1 / row["tower"] + 1 / decode)
        row["best_bound"] = 1 / (1 / fastest + 1 / decode)
        if "pipeline" in row:
            row["vs_seed"] = row["pipeline"] / row["seed_loop"]
            row["vs_bound"] = row["pipeline"] / row["bound"]
            row["vs_best_bound"] = row["pipeline"] / row["best_bound"]


def _cells(row: dict[str, Any]) -> list[str]:
    accuracy = row[f"accuracy/{row['corpus']}/{row['labels']}"]
    memory = row.get("memory", {})
    piped = "pipeline" in row
    return [row["labels"], row["corpus"], row["runtime"],
            f"{row['seed_loop']:.3f} (n={row['seed_images']})", f"{row['tower']:.2f}",
            f"{row['decode']:.1f}", f"{row['bound']:.2f}",
            f"{row['pipeline']:.2f}" if piped else "-",
            f"{row['vs_seed']:.1f}x" if piped else "-",
            f"{row['vs_bound']:.2f}" if piped else "-",
            f"{row['vs_best_bound']:.2f}" if piped else "-",
            f"{row['pipeline_detail']['model_busy']:.0%}" if piped else "-",
            f"{accuracy['min_cosine']:.5f}", f"{accuracy['max_score_difference']:.4f}",
            (f"{memory['after_warm_up_mib']:.0f}/{memory['end_mib']:.0f}/"
             f"{memory['max_after_warm_up_mib']:.0f}") if memory else "-"]


def print_report(command: str, info: dict[str, Any], rows: list[dict[str, Any]],
                 args: argparse.Namespace) -> None:
    _ratios(rows, info)
    print(f"command: {command}")
    print(f"device {info['device']} ({info['gpu'] or str(info['cpus']) + ' CPUs'}), "
          f"{info['decoder']} decoder, batch {info['batch_size']}, chunk {info['chunk_size']}, "
          f"{info['decode_processes']} decode processes, "
          f"{info['torch_threads']} torch threads, torch {info['torch']}, model "
          f"{'tiny' if args.tiny else 'ViT-B/16 (random weights)'}")
    print(f"(4): {args.pipeline} pipeline, {args.images} images per run, one worker process, "
          "from the run's first enqueue to the last committed row, worker warmed up first")
    head = ["labels", "corpus", "runtime", "(1) seed", "(2) tower", "(3) decode", "bound",
            "(4) pipeline", "(4)/(1)", "(4)/bound", "(4)/best", "busy", "min cos",
            "max dscore", "RSS warm/end/max MiB"]
    table = [head, *(_cells(row) for row in rows)]
    widths = [max(len(str(r[i])) for r in table) for i in range(len(head))]
    for row in table:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))
    print("images/s throughout; bound = 1/(1/(2) + 1/(3)) of the row's runtime, best = of the "
          "fastest runtime here; busy = share of (4) in forward passes; min cos / max dscore: "
          "worst image-embedding cosine and largest softmax score difference to torch float32 "
          "over the whole corpus; RSS of the process holding the model")
    for name, rate in info.get("other_decoders", {}).items():
        print(f"  (3) with the {name.replace('/', ' decoder on ')}: {rate:.1f} images/s")
    shown = set()
    for row in rows:
        for candidate in row.get("candidates") or []:
            if candidate["name"] not in shown:
                shown.add(candidate["name"])
                print(f"  auto measured {candidate}")
    if args.json:
        args.json.write_text(json.dumps({"command": command, "info": info, "rows": rows},
                                        indent=2, ensure_ascii=False, default=str))
