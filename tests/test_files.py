"""Files are written whole or not at all."""

import pytest

from vit_explore._files import atomic_path, write_bytes_atomically, write_text_atomically


def test_replaced_only_when_complete(tmp_path):
    out = tmp_path / "r.json"
    out.write_text("old")
    with pytest.raises(RuntimeError, match="mid-write"), atomic_path(out) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("mid-write")
    assert out.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left
    write_text_atomically(out, "new")
    assert out.read_text() == "new"
    write_bytes_atomically(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "r.json"]


def test_a_writer_that_never_creates_the_file(tmp_path):
    out = tmp_path / "x.txt"
    # nothing to rename: the error surfaces, nothing is created
    with pytest.raises(FileNotFoundError), atomic_path(out):
        pass
    assert not out.exists() and not list(tmp_path.iterdir())
