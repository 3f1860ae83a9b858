"""Build a Chinese CLIP checkpoint with random weights on disk, to try the tool with no hub.

    python -m worker.checkpoint ./model --tiny       # seconds; labels are meaningless
    TAGGER_MODEL=./model producer tag ./images

Full size (the default) is the ViT-B/16 architecture, for measuring speed: compute cost does not
depend on the weight values. The vocabulary covers the shipped label sets and --labels files.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from pathlib import Path

from worker.core.settings import LABELSETS

VOCAB_SIZE = 21128  # the OFA-Sys checkpoints' BERT vocabulary size
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def vocabulary(texts: Iterable[str], size: int | None) -> list[str]:
    """Special tokens, every character of ``texts``, then filler tokens up to ``size``."""
    chars = sorted(set("".join(texts)) - set(" \n\t\r{}#/"))
    vocab = [*SPECIAL, *chars]
    if size is not None:
        if len(vocab) > size:
            raise ValueError(f"{len(vocab)} distinct characters do not fit a {size} vocabulary")
        vocab += [f"[unused{i}]" for i in range(size - len(vocab))]
    return vocab


def build(path: Path, texts: Iterable[str], *, tiny: bool = False, projection_dim: int = 16,
          seed: int = 0) -> Path:
    """Save model, tokenizer and the OFA-Sys image processor config into ``path``.

    Full size is `ChineseCLIPConfig(text_config={"vocab_size": 21128}, vision_config={...16,
    224}, projection_dim=512)`: compute cost does not depend on the weight values. A tiny one
    has ``projection_dim``-wide embeddings (512, as ViT-B/16's, to measure what depends on it).
    ``seed``: other random weights of the same shape (the same files, the same sizes).
    """
    import numpy as np
    import torch
    from transformers import (
        BertTokenizer,
        ChineseCLIPConfig,
        ChineseCLIPImageProcessor,
        ChineseCLIPModel,
        ChineseCLIPProcessor,
    )

    vocab = vocabulary(texts, None if tiny else VOCAB_SIZE)
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    side = 32 if tiny else 224
    if tiny:
        config = ChineseCLIPConfig(
            text_config={"vocab_size": len(vocab), "hidden_size": 32, "num_hidden_layers": 2,
                         "num_attention_heads": 2, "intermediate_size": 37,
                         "max_position_embeddings": 64},
            vision_config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                           "intermediate_size": 37, "image_size": side, "patch_size": 8},
            projection_dim=projection_dim)
    else:
        config = ChineseCLIPConfig(text_config={"vocab_size": VOCAB_SIZE},
                                   vision_config={"patch_size": 16, "image_size": side},
                                   projection_dim=512)
    torch.manual_seed(seed)
    model = ChineseCLIPModel(config)
    with torch.no_grad():
        model.logit_scale.fill_(np.log(100.0))  # as the trained checkpoints hold
    model.save_pretrained(path)
    processor = ChineseCLIPImageProcessor(
        size={"height": side, "width": side}, crop_size={"height": side, "width": side},
        do_center_crop=False, resample=3, image_mean=CLIP_MEAN, image_std=CLIP_STD)
    tokenizer = BertTokenizer(str(path / "vocab.txt"))
    ChineseCLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(path)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m worker.checkpoint", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="where to save the checkpoint")
    parser.add_argument("--tiny", action="store_true",
                        help="a tiny model (hidden size 32, 2 layers): for tests and trying")
    parser.add_argument("--labels", type=Path, action="append", default=[],
                        help="label files whose characters the tokenizer must know")
    args = parser.parse_args(argv)
    texts = [p.read_text(encoding="utf-8") for p in [*LABELSETS.glob("*.txt"), *args.labels]]
    folder = build(args.folder.absolute(), texts, tiny=args.tiny)
    print(f"saved a random {'tiny' if args.tiny else 'ViT-B/16'} Chinese CLIP to {folder}; "
          f"use it with TAGGER_MODEL={folder}")


if __name__ == "__main__":
    main()
