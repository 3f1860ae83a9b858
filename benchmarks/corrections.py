"""How agreement with reviewers grows with corrections per label, on embeddings of known structure.

    python -m benchmarks.corrections [--labels 20] [--dim 512] [--seeds 3]

The embeddings (nothing here is a real checkpoint): labels and images vary in a 32-dimensional
subspace of the 512 values. Each label has a centre there, a random unit vector; an image of a
label is its centre plus Gaussian noise (norm 1.5), plus a direction every image shares (twice
as long), normalised: images of one label have cosine ~0.7, of two labels ~0.55. A label's text
vector is its centre moved by an offset of its own (norm 0.85) and by up to 0.9 of another
label's centre (labels confused with each other), plus another direction every text shares
(CLIP's modality gap), normalised: image-text cosine ~0.16. Zero-shot then gets about 40% of
the images wrong, some labels far worse than others; the true centres, which no method is
given, get ~6% wrong: the labels overlap.

A reviewer looks at N images of each label (N = 0, 1, 5, 20): where the zero-shot label is right
they accept it; where it is wrong they pick the right one from the label set, or (every second
time) only reject the wrong one. Learning (producer/learn, as `producer relabel --learn` runs it)
then fits label vectors to those verdicts. Printed per N, median over seeds: agreement of the
top label with the truth on 4,000 held-out images (zero-shot and learned), the 5-fold
cross-validated agreement with the verdicts that learning reports, the method it chose, and how
many of the reviewers' own verdicts the learned vectors contradict.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from producer.learn.choose import learn
from producer.learn.fit import Start, top
from testkit.clusters import reviewed, world

HELD_OUT = 4000
PER_LABEL = (0, 1, 5, 20)
SCALE = 100.0  # a trained checkpoint's logit scale


def one(seed: int, labels: int, dim: int, per_label: int) -> dict[str, float | str | None]:
    rng = np.random.default_rng(seed)
    w = world(rng, labels, dim)
    held = rng.integers(0, labels, HELD_OUT)
    x_held = w.images(rng, held)
    zero = float((top(w.texts, x_held) == held).mean())
    if per_label == 0:
        return {"zero": zero, "learned": zero, "cv_zero": None, "cv_learned": None,
                "method": "zero-shot", "contradicted": 0, "seconds": 0.0}
    examples = reviewed(rng, w, per_label)
    centre = w.images(rng, rng.integers(0, labels, 2000)).mean(axis=0)  # as from kept ones
    started = time.perf_counter()
    learned = learn(Start(w.texts, SCALE, centre), examples)
    seconds = time.perf_counter() - started
    agreement = learned.report["agreement"]
    return {"zero": zero, "learned": float((top(learned.vectors, x_held) == held).mean()),
            "cv_zero": agreement["zero-shot"], "cv_learned": agreement["learned"],
            "method": f"{learned.method} {learned.value:g}",
            "contradicted": learned.report["contradicted"], "seconds": seconds}


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return round(100 * statistics.median(values), 1) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=20)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    for per_label in PER_LABEL:
        runs = [one(seed, args.labels, args.dim, per_label) for seed in range(args.seeds)]
        line = {"per_label": per_label,
                "held_out_zero_shot": _median([r["zero"] for r in runs]),
                "held_out_learned": _median([r["learned"] for r in runs]),
                "cv_zero_shot": _median([r["cv_zero"] for r in runs]),
                "cv_learned": _median([r["cv_learned"] for r in runs]),
                "methods": sorted({str(r["method"]) for r in runs}),
                "contradicted": max(int(r["contradicted"]) for r in runs),  # type: ignore[arg-type]
                "learn_seconds": round(statistics.median(float(r["seconds"]) for r in runs), 2)}
        gains = [100 * (float(r["learned"]) - float(r["zero"])) for r in runs]  # type: ignore
        line["gain_points"] = round(statistics.median(gains), 1)  # median over seeds
        line["least_gain_points"] = round(min(gains), 1)
        print(json.dumps(line, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
