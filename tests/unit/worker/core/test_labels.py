"""Label files: parsing, normalisation, validation and content ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.core.errors import ConfigError
from worker.core.labels import (
    MAX_LABELS,
    MAX_PROMPTS,
    LabelSet,
    LabelSetError,
    load_labelset,
    parse_labels,
    parse_templates,
)
from worker.core.settings import LABELSETS


def test_comments_blanks_and_parents():
    labels, parents = parse_labels("# 类目\n\n家居/台灯\n  椅子  \n家居 / 桌子\n")
    assert labels == ["台灯", "椅子", "桌子"]
    assert parents == ["家居", None, "家居"]


def test_duplicates_are_dropped_keeping_the_first():
    labels, _ = parse_labels("台灯\n椅子\n台灯\n")
    assert labels == ["台灯", "椅子"]


def test_same_label_under_two_parents_is_refused():
    message = r"labels:2: label '台灯' is already under parent '家居' \(line 1\)"
    with pytest.raises(LabelSetError, match=message):
        parse_labels("家居/台灯\n灯具/台灯\n")
    # Before: "is already under parent None".
    with pytest.raises(LabelSetError, match=r"labels:2: label '台灯' is already listed without "
                                            r"a parent \(line 1\); a label can have one parent"):
        parse_labels("台灯\n灯具/台灯\n")


def test_over_long_label_is_refused_with_its_line():
    with pytest.raises(LabelSetError, match=r"labels:2: label is 49 characters"):
        parse_labels("台灯\n" + "长" * 49 + "\n")


def test_empty_label_set_is_refused(tmp_path: Path):
    path = tmp_path / "empty.txt"
    path.write_text("# nothing here\n\n", encoding="utf-8")
    with pytest.raises(LabelSetError, match="has no labels"):
        load_labelset(path)


def test_templates_need_exactly_one_placeholder():
    assert parse_templates("{}的照片。\n# c\n\n一张{}。") == ["{}的照片。", "一张{}。"]
    with pytest.raises(LabelSetError, match="exactly once"):
        LabelSet(labels=("猫",), parents=(None,), templates=("没有占位符",))


def test_id_depends_on_content_not_name(tmp_path: Path):
    a = tmp_path / "a.txt"
    b = tmp_path / "b.txt"
    a.write_text("台灯\n椅子\n", encoding="utf-8")
    b.write_text("# same labels, other file\n台灯\n\n椅子\n", encoding="utf-8")
    assert load_labelset(a).id == load_labelset(b).id
    b.write_text("台灯\n椅子\n猫\n", encoding="utf-8")
    assert load_labelset(a).id != load_labelset(b).id
    templates = tmp_path / "t.txt"
    templates.write_text("{}的照片。\n", encoding="utf-8")
    assert load_labelset(a, templates).id != load_labelset(a).id


def test_prompts_and_json_round_trip():
    labelset = LabelSet(labels=("猫", "狗"), parents=("动物", "动物"),
                        templates=("{}的照片。", "一张{}。"), name="pets")
    assert labelset.prompts() == [["猫的照片。", "一张猫。"], ["狗的照片。", "一张狗。"]]
    assert LabelSet.from_json(labelset.to_json()) == labelset


def test_unreadable_file_is_a_label_set_error(tmp_path: Path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(LabelSetError, match="cannot read"):
        load_labelset(path)
    with pytest.raises(LabelSetError, match="cannot read"):
        load_labelset(tmp_path / "missing.txt")


def test_non_utf8_file_error_names_the_file(tmp_path: Path):
    path = tmp_path / "商品 labels.txt"
    path.write_bytes("台灯\n椅子\n".encode("gbk"))
    with pytest.raises(LabelSetError) as info:
        load_labelset(path)
    message = str(info.value)
    assert str(path) in message and "not UTF-8" in message and "\n" not in message
    assert isinstance(info.value, ConfigError)  # shown as one line by the commands
    templates = tmp_path / "templates.txt"
    templates.write_bytes("{}的照片。\n".encode("gbk"))
    path.write_text("台灯\n", encoding="utf-8")
    with pytest.raises(LabelSetError, match=f"templates file {templates}"):
        load_labelset(path, templates)


def test_shipped_label_sets_load():
    labelset = load_labelset(LABELSETS / "ecommerce_zh.txt", LABELSETS / "templates_zh.txt")
    assert len(labelset.labels) > 100 and len(labelset.templates) == 80


@pytest.mark.parametrize(("content", "where", "what"), [
    ("台灯\n椅\0子\n", ":2:", "U+0000"),
    ("台灯\n\x1b[31m红\n", ":2:", "U+001B"),
    ("台灯\r椅子\n", ":1:", "U+000D"),  # a lone CR is not a line end
    ("台灯\n\u200b椅子\n", ":2:", "U+200B"),  # zero-width space: a look-alike label
    ("台灯\n椅\u202e子\n", ":2:", "U+202E"),  # bidi override
    ("台灯\n\ufeff椅子\n", ":2:", "U+FEFF"),  # a BOM that is not at the start
    ("台灯\u2028椅子\n", ":1:", "U+2028"),
    ("台灯\n" + "长" * 5000 + "\n", ":2:", "over 200"),
    ("台灯\n" + "长" * 49 + "/台灯\n", ":2:", "parent is 49 characters"),
])
def test_hostile_label_files_are_one_line_naming_file_and_line(tmp_path: Path, content: str,
                                                               where: str, what: str):
    path = tmp_path / "labels.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(LabelSetError) as info:
        load_labelset(path)
    message = str(info.value)
    assert message.startswith(f"{path}{where}") and what in message, message
    assert "\n" not in message and len(message) < 300


def test_a_bom_and_crlf_are_read_as_plain_utf8(tmp_path: Path):
    plain, windows = tmp_path / "plain.txt", tmp_path / "windows.txt"
    plain.write_text("# 类目\n家居/台灯\n椅子\n", encoding="utf-8")
    windows.write_bytes("\ufeff# 类目\r\n家居/台灯\r\n椅子\r\n".encode())
    assert load_labelset(windows).id == load_labelset(plain).id
    assert load_labelset(windows).labels == ("台灯", "椅子")


@pytest.mark.parametrize("template", ["{}的{照片}", "{0}的照片", "{}的照片}", "{:>9}", "{!r}"])
def test_templates_with_other_braces_are_refused(tmp_path: Path, template: str):
    labels, templates = tmp_path / "labels.txt", tmp_path / "templates.txt"
    labels.write_text("猫\n", encoding="utf-8")
    templates.write_text(f"{{}}的照片。\n{template}\n", encoding="utf-8")
    with pytest.raises(LabelSetError, match=f"^{templates}:2: template"):
        load_labelset(labels, templates)


def test_a_label_file_is_read_to_a_cap(tmp_path: Path):
    with pytest.raises(LabelSetError, match="over 2097152 bytes"):
        load_labelset(Path("/dev/zero"))


def test_label_sets_are_capped_in_labels_and_prompts(tmp_path: Path):
    """60,000 labels (a 4 MiB file passed before) would hold 60,000 text embeddings in every
    worker: a label set has at most MAX_LABELS labels and MAX_PROMPTS prompts."""
    labels = tmp_path / "many.txt"
    labels.write_text("".join(f"类{n}\n" for n in range(MAX_LABELS + 1)), encoding="utf-8")
    with pytest.raises(LabelSetError, match=f"has {MAX_LABELS + 1} labels, over the limit"):
        load_labelset(labels)
    labels.write_text("".join(f"类{n}\n" for n in range(MAX_LABELS)), encoding="utf-8")
    assert len(load_labelset(labels).labels) == MAX_LABELS
    templates = tmp_path / "templates.txt"
    templates.write_text("".join(f"{n}{{}}\n" for n in range(6)), encoding="utf-8")
    with pytest.raises(LabelSetError, match=f"{6 * MAX_LABELS} prompts, over the limit of "
                                            f"{MAX_PROMPTS}"):
        load_labelset(labels, templates)
