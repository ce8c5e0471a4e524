"""Card stores: the shared contract, the directory store's files and tokens, and store URLs."""

from __future__ import annotations

import os
import threading

import pytest

from zmeshlib._exceptions import RegistryError
from zmeshlib.registry import CardStore, DirStore, MemoryStore, check_key_id, open_store


@pytest.fixture(params=["memory", "dir"])
def store(request, tmp_path) -> CardStore:
    if request.param == "memory":
        return MemoryStore()
    return DirStore(tmp_path / "cards")


def test_put_get_replace_delete_scan(store):
    assert isinstance(store, CardStore)
    assert store.get("aa") is None and list(store.scan()) == []
    store.put("bb", b"two")
    store.put("aa", b"one")
    store.put("aa", b"uno")
    assert store.get("aa") == b"uno"
    assert list(store.scan()) == [("aa", b"uno"), ("bb", b"two")]
    store.delete("aa")
    store.delete("aa")  # deleting a missing key is not an error
    assert store.get("aa") is None
    assert list(store.scan()) == [("bb", b"two")]
    store.close()


@pytest.mark.parametrize("bad", ["", "../etc/passwd", "a/b", ".hidden", "x" * 129, "a b", "é"])
def test_unsafe_key_ids_are_refused(store, bad):
    with pytest.raises(RegistryError, match="invalid card key id"):
        store.put(bad, b"x")
    with pytest.raises(RegistryError):
        store.get(bad)
    with pytest.raises(RegistryError):
        check_key_id(bad)


def test_memory_version_moves_on_every_change_and_only_then():
    store = MemoryStore()
    tokens = [store.version()]
    store.put("a", b"1")
    tokens.append(store.version())
    assert store.version() == tokens[-1]
    store.delete("missing")
    assert store.version() == tokens[-1]
    store.delete("a")
    tokens.append(store.version())
    assert len(set(tokens)) == 3


def test_dir_store_writes_one_file_per_card_and_ignores_other_files(tmp_path):
    store = DirStore(tmp_path)
    store.put("ab12", b"card")
    assert (tmp_path / "ab12.card").read_bytes() == b"card"
    (tmp_path / ".tmp-ab12-1-x").write_bytes(b"half a card")  # a writer in progress
    (tmp_path / "notes.txt").write_bytes(b"x")
    (tmp_path / ".hidden.card").write_bytes(b"x")
    (tmp_path / "sub.card").mkdir()
    assert list(store.scan()) == [("ab12", b"card")]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-ab12-")) == [
        ".tmp-ab12-1-x"
    ]


def test_dir_store_reads_at_most_one_byte_past_its_limit(tmp_path):
    store = DirStore(tmp_path, max_file_size=10)
    (tmp_path / "big.card").write_bytes(b"x" * 1000)
    assert store.get("big") == b"x" * 11


def age(path, seconds: float = 3600) -> None:
    """Make a directory look untouched for ``seconds`` (its mtime is the store's change clock)."""
    old = int((os.stat(path).st_mtime - seconds) * 1e9)
    os.utime(path, ns=(old, old))


@pytest.mark.parametrize("racy_window", [0.0, 1.0])
@pytest.mark.parametrize("change", ["put-new", "replace", "delete"])
def test_dir_store_version_is_stable_when_quiet_and_moves_on_change(tmp_path, racy_window, change):
    store = DirStore(tmp_path, racy_window=racy_window)
    store.put("a", b"1")
    age(tmp_path)
    quiet = store.version()
    assert store.version() == quiet
    {"put-new": lambda: store.put("b", b"2"), "replace": lambda: store.put("a", b"2")}.get(
        change, lambda: store.delete("a")
    )()
    assert store.version() != quiet


def test_dir_store_version_is_always_new_while_the_directory_is_recent(tmp_path):
    store = DirStore(tmp_path, racy_window=3600)
    store.put("a", b"1")
    assert store.version() != store.version()


def test_dir_store_threads_replacing_one_key_never_tear_it(tmp_path):
    store = DirStore(tmp_path)
    payloads = {bytes([i]) * 4096 for i in range(8)}
    errors: list[bytes] = []

    def writer(payload: bytes) -> None:
        for _ in range(25):
            store.put("shared", payload)

    def reader() -> None:
        for _ in range(200):
            data = store.get("shared")
            if data is not None and data not in payloads:
                errors.append(data)

    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    threads.append(threading.Thread(target=reader))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.get("shared") in payloads
    assert [p.name for p in tmp_path.iterdir()] == ["shared.card"]


def test_open_store_urls(tmp_path, monkeypatch):
    absolute = open_store(f"dir://{tmp_path}/abs")
    assert isinstance(absolute, DirStore) and absolute.path == tmp_path / "abs"
    monkeypatch.chdir(tmp_path)
    relative = open_store("dir://rel/cards")
    assert isinstance(relative, DirStore) and (tmp_path / "rel" / "cards").is_dir()
    shared = open_store("memory://")
    assert isinstance(shared, MemoryStore) and open_store("memory://") is shared
    named = open_store("memory://test-open-store-urls")
    assert named is not shared and open_store("memory://test-open-store-urls") is named


@pytest.mark.parametrize("url", ["redis://localhost", "/tmp/cards", "dir://", "file:///tmp/x", ""])
def test_open_store_rejects_unknown_urls_with_a_hint(url):
    with pytest.raises(RegistryError, match="dir:///"):
        open_store(url)


def test_dir_store_on_a_path_that_cannot_be_a_directory(tmp_path):
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(RegistryError, match=r"writable path|not a directory"):
        DirStore(tmp_path / "file" / "cards")
    with pytest.raises(RegistryError, match="not a directory"):
        DirStore(tmp_path / "file")


def test_dir_store_write_failure_is_a_registry_error_and_leaves_no_temp_file(tmp_path):
    store = DirStore(tmp_path)
    (tmp_path / "k.card").mkdir()  # os.replace of a file onto a directory fails
    with pytest.raises(RegistryError, match="cannot write card k"):
        store.put("k", b"x")
    assert sorted(os.listdir(tmp_path)) == ["k.card"]
