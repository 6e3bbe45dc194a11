"""The key cache: memory only, IDs out, precise errors, VM-scoped removal."""

from __future__ import annotations

import copy
import os
import pickle
import threading
from pathlib import Path

import pytest

from vmcrypt.crypto import InvalidKey, generate_kek
from vmcrypt.host import KeyCache, KeyNotOnHost
from vmcrypt.providers import ForeignWrappedKek, KekRef


def test_put_get_has_remove() -> None:
    cache = KeyCache()
    kek = generate_kek()
    cache.put_kek("kms", "k1", kek)
    assert cache.has("kms", "k1")
    assert cache.get_kek("kms", "k1") == kek
    assert cache.key_ids() == [("kms", "k1")]
    assert cache.remove_kek("kms", "k1") is True
    assert not cache.has("kms", "k1")
    assert cache.remove_kek("kms", "k1") is False


def test_missing_key_is_key_not_on_host() -> None:
    cache = KeyCache()
    with pytest.raises(KeyNotOnHost, match="key missing on host") as err:
        cache.get_kek("kms", "nope")
    assert err.value.provider_id == "kms"
    assert err.value.key_id == "nope"
    assert "push" in str(err.value)
    with pytest.raises(KeyNotOnHost, match="primary key of native key provider"):
        cache.native_provider("nkp")


def test_rejects_bad_kek() -> None:
    with pytest.raises(InvalidKey):
        KeyCache().put_kek("kms", "k1", b"short")
    with pytest.raises(ValueError, match="provider ID"):
        KeyCache().put_kek("", "k1", generate_kek())


def test_repr_and_ids_show_no_key_bytes() -> None:
    cache = KeyCache()
    kek, primary = generate_kek(), generate_kek()
    cache.put_kek("kms", "k1", kek, vm_id="vm")
    cache.put_primary_key("nkp", primary)
    text = repr(cache) + str(cache.key_ids()) + repr(cache.native_provider("nkp"))
    assert text.startswith("KeyCache(keks=1, native_providers=1, vms=1)")
    for secret in (kek, primary):
        assert secret.hex() not in text
        assert repr(secret) not in text
    assert len(cache) == 2


def test_cannot_be_pickled_or_copied() -> None:
    cache = KeyCache()
    cache.put_kek("kms", "k1", generate_kek())
    with pytest.raises(TypeError, match="memory only"):
        pickle.dumps(cache)
    with pytest.raises(TypeError):
        copy.deepcopy(cache)


def test_never_touches_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cache = KeyCache()
    for n in range(20):
        cache.put_kek("kms", f"k{n}", generate_kek(), vm_id=f"vm{n % 3}")
    cache.put_primary_key("nkp", generate_kek())
    made = cache.native_provider("nkp").new_kek()
    assert cache.resolve("nkp", made.ref) == made.kek
    cache.forget_vm("vm0")
    cache.remove_provider("kms")
    cache.clear()
    assert os.listdir(tmp_path) == []


def test_forget_vm_keeps_shared_keys() -> None:
    cache = KeyCache()
    shared, own, unused = generate_kek(), generate_kek(), generate_kek()
    cache.put_kek("kms", "shared", shared, vm_id="a")
    cache.associate("b", "kms", "shared")
    cache.put_kek("kms", "own", own, vm_id="a")
    cache.put_kek("kms", "unused", unused)
    assert cache.vm_ids() == ["a", "b"]
    assert cache.forget_vm("a") == [("kms", "own")]
    assert cache.key_ids() == [("kms", "shared"), ("kms", "unused")]
    assert cache.forget_vm("b") == [("kms", "shared")]
    assert cache.key_ids() == [("kms", "unused")]
    assert cache.forget_vm("never-registered") == []


def test_resolve_records_vm_use() -> None:
    cache = KeyCache()
    kek = generate_kek()
    cache.put_kek("kms", "k1", kek)
    assert cache.resolve("kms", KekRef(key_id="k1"), vm_id="vm") == kek
    assert cache.forget_vm("vm") == [("kms", "k1")]
    assert not cache.has("kms", "k1")


def test_native_primary_key_resolves_wrapped_keks() -> None:
    cache = KeyCache()
    cache.put_primary_key("nkp", generate_kek())
    made = cache.native_provider("nkp").new_kek()
    assert cache.resolve("nkp", made.ref) == made.kek
    other = KeyCache()
    other.put_primary_key("nkp", generate_kek())
    with pytest.raises(ForeignWrappedKek):
        other.resolve("nkp", made.ref)
    assert cache.native_provider_ids() == ["nkp"]
    assert cache.has_primary_key("nkp")


def test_remove_provider_and_clear() -> None:
    cache = KeyCache()
    cache.put_kek("kms", "k1", generate_kek())
    cache.put_kek("other", "k1", generate_kek())
    cache.put_primary_key("kms", generate_kek())
    cache.remove_provider("kms")
    assert cache.key_ids() == [("other", "k1")]
    assert not cache.has_primary_key("kms")
    cache.clear()
    assert len(cache) == 0
    assert cache.key_ids() == []


def test_removed_key_buffer_is_wiped() -> None:
    cache = KeyCache()
    cache.put_kek("kms", "k1", generate_kek())
    buf = cache._keks[("kms", "k1")]
    cache.remove_kek("kms", "k1")
    assert bytes(buf) == bytes(32)


def test_thread_safe_under_concurrent_use() -> None:
    cache = KeyCache()
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(200):
                kek = generate_kek()
                cache.put_kek("kms", f"{n}-{i}", kek, vm_id=f"vm{n}")
                assert cache.get_kek("kms", f"{n}-{i}") == kek
                cache.key_ids()
            cache.forget_vm(f"vm{n}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert cache.key_ids() == []
