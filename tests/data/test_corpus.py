"""Corpus sources (stdlib default, pydoc_topics, text dir, jsonl, parquet, save_to_disk) and their errors."""
import json

import datasets
import pytest

from seqmodels.data.corpus import corpus_stats, load_corpus, stdlib_corpus


def test_stdlib_corpus_capped_deterministic():
    a = stdlib_corpus(max_bytes=200_000)
    b = load_corpus("stdlib", max_bytes=200_000)
    assert a["text"] == b["text"]
    stats = corpus_stats(a)
    assert stats["documents"] == len(a) > 3
    assert stats["bytes"] == sum(len(t.encode("utf-8")) for t in a["text"]) <= 200_000
    assert "Python" in a["text"][0]  # LICENSE.txt comes first


def test_pydoc_topics_is_one_document_per_topic_in_sorted_order():
    from pydoc_data.topics import topics

    from seqmodels.data.corpus import corpus_fingerprint

    ds = load_corpus("pydoc_topics")
    assert ds["text"] == [topics[name] for name in sorted(topics) if topics[name]]
    assert len(ds) > 50 and "assignment" in topics and topics["assignment"] in ds["text"]
    assert corpus_fingerprint("pydoc_topics") != corpus_fingerprint("stdlib")


def test_text_directory_one_document_per_file(tmp_path):
    (tmp_path / "sub").mkdir()
    files = {"b.txt": "second\nfile\n", "a.md": "# first\n\ntext", "sub/c.txt": "third ünïcode"}
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / ".hidden").write_text("skipped")
    ds = load_corpus(tmp_path)
    assert ds["text"] == [files["a.md"], files["b.txt"], files["sub/c.txt"]]


def test_jsonl_parquet_and_saved_dataset(tmp_path):
    rows = [{"body": "one doc", "id": 1}, {"body": "", "id": 2}, {"body": "two doc", "id": 3}]
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows))
    assert load_corpus(jsonl, text_field="body")["text"] == ["one doc", "two doc"]  # empty doc dropped
    table = datasets.Dataset.from_list(rows)
    table.to_parquet(str(tmp_path / "data.parquet"))
    assert load_corpus(tmp_path / "data.parquet", text_field="body")["text"] == ["one doc", "two doc"]
    table.rename_column("body", "text").save_to_disk(str(tmp_path / "saved"))
    assert load_corpus(tmp_path / "saved")["text"] == ["one doc", "two doc"]


def test_corpus_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_corpus(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty corpus"):
        load_corpus(tmp_path / "empty")
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "a.txt").write_text("")
    with pytest.raises(ValueError, match="empty corpus"):
        load_corpus(tmp_path / "blank")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.txt").write_text("fine")
    (tmp_path / "bad" / "img.png").write_bytes(b"\x89PNG")
    with pytest.raises(ValueError, match=r"unsupported file type: .*img\.png \(supported: \.txt, \.md, \.jsonl"):
        load_corpus(tmp_path / "bad")
    (tmp_path / "x.jsonl").write_text(json.dumps({"body": "a"}))
    with pytest.raises(ValueError, match="text_field 'text' is not a column"):
        load_corpus(tmp_path / "x.jsonl")
    with pytest.raises(ValueError, match="max_bytes"):
        stdlib_corpus(max_bytes=0)
