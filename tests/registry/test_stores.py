"""Card stores: the shared contract, the directory store's files and tokens, and store URLs."""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from zmeshlib._exceptions import RegistryError
from zmeshlib.registry import (
    CardStore,
    DirStore,
    MemoryStore,
    Unreadable,
    check_key_id,
    open_store,
)


@pytest.fixture(params=["memory", "dir", "redis"])
def store(request, tmp_path) -> Iterator[CardStore]:
    if request.param == "memory":
        yield MemoryStore()
    elif request.param == "dir":
        yield DirStore(tmp_path / "cards")
    else:
        redis_store = open_store(request.getfixturevalue("redis_url"))
        yield redis_store
        redis_store.close()


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
    (tmp_path / "no spaces.card").write_bytes(b"x")  # not a key id
    (tmp_path / "sub").mkdir()
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


@pytest.mark.parametrize("url", ["/tmp/cards", "dir://", "file:///tmp/x", "", "http://localhost"])
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


def special_files(directory) -> dict[str, str]:
    """Make every kind of name a card file must not be; returns key id -> what it is."""
    os.mkfifo(directory / "fifo.card")
    os.symlink("loop-b.card", directory / "loop-a.card")
    os.symlink("loop-a.card", directory / "loop-b.card")
    (directory / "target").write_bytes(b"a regular file elsewhere")
    os.symlink(directory / "target", directory / "link.card")
    os.symlink(directory / "missing", directory / "dangling.card")
    (directory / "dir.card").mkdir()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(directory / "sock.card"))
    server.close()  # the socket file stays; nobody listens
    return {
        "dangling": "symlink",
        "dir": "directory",
        "fifo": "FIFO",
        "link": "symlink",
        "loop-a": "symlink",
        "loop-b": "symlink",
        "sock": "socket",
    }


def test_dir_store_refuses_every_entry_that_is_not_a_regular_file(tmp_path):
    store = DirStore(tmp_path)
    store.put("good", b"card bytes")
    kinds = special_files(tmp_path)
    # no read blocks (a FIFO without a writer, a socket), follows a link or raises
    scanned = dict(store.scan())
    assert scanned.pop("good") == b"card bytes"
    assert sorted(scanned) == sorted(kinds)
    for key_id, kind in kinds.items():
        entry = store.get(key_id)
        assert isinstance(entry, Unreadable) and entry.rule == "not-a-file", key_id
        assert scanned[key_id] == entry
        assert f"{key_id}.card" in entry.reason
        if kind in ("directory", "FIFO"):
            assert kind in entry.reason


def test_dir_store_reports_a_card_file_it_may_not_read_instead_of_raising(tmp_path, monkeypatch):
    store = DirStore(tmp_path)
    store.put("secret", b"x")
    store.put("open", b"y")
    real_open = os.open

    def open_refusing(path, flags, *args):
        # running as root, file modes cannot make a file unreadable: refuse as the kernel would
        if os.fspath(path).endswith("secret.card"):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", open_refusing)
    assert store.get("secret") == Unreadable(
        "unreadable", "secret.card cannot be opened: Permission denied"
    )
    assert [k for k, v in store.scan() if isinstance(v, Unreadable)] == ["secret"]
    assert store.get("open") == b"y"


def test_a_dir_store_whose_directory_is_gone_raises_registry_error(tmp_path):
    store = DirStore(tmp_path / "cards")
    store.put("a", b"1")
    os.unlink(tmp_path / "cards" / "a.card")
    os.rmdir(tmp_path / "cards")
    assert store.get("a") is None
    with pytest.raises(RegistryError, match="cannot stat the card directory"):
        store.version()
    with pytest.raises(RegistryError, match="cannot list the card directory"):
        list(store.scan())


def test_the_policy_slot_is_kept_apart_from_the_cards_and_moves_the_version(store):
    assert store.get_policy() is None
    store.put("aa", b"card")
    before = store.version()
    store.put_policy(b"signed policy v1")
    assert store.get_policy() == b"signed policy v1"
    assert store.version() != before
    store.put_policy(b"signed policy v2")
    assert store.get_policy() == b"signed policy v2"
    assert list(store.scan()) == [("aa", b"card")]  # never listed as a card


def test_the_policy_token_moves_with_the_policy_and_not_with_cards(store):
    deadline = time.monotonic() + 5
    while store.policy_version() != store.policy_version():  # Redis: until it listens
        assert time.monotonic() < deadline, "the policy token never settled"
        time.sleep(0.01)
    first = store.policy_version()
    store.put("aa", b"card")
    store.delete("aa")
    assert store.policy_version() == first  # cards leave it alone
    store.put_policy(b"v1")
    moved = store.policy_version()
    assert moved != first
    store.put_policy(b"v2")
    assert store.policy_version() != moved
