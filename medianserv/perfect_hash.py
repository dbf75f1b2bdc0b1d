"""PerfectHash: a minimal perfect hash over a fixed set of symbol names, written by hand.

Theory of operation
-------------------
Hash-and-displace (in the spirit of CHD, Belazzougui, Botelho and Dietzfelbinger 2009), with
direct placement of singleton buckets:

1. Every key's UTF-8 bytes get a base hash ``h = crc32(key, seed)`` (``zlib.crc32``: C speed,
   identical in every process and on every machine, unlike Python's salted ``hash()``).
2. ``h % m`` picks one of ``m`` buckets, ``m`` the smallest odd prime >= n. Buckets holding
   two or more keys are placed first, largest first: for a bucket we search for the first
   displacement ``d`` such that ``crc32(key, d) % m`` sends all its keys to distinct free
   slots, and store ``d``.
3. Buckets holding one key take the remaining free slots directly: we store ``-(slot + 1)``.

The table has ``m`` slots for n keys: *near-minimal*, load factor n/m (0.9996 for the 2,292
real symbols, >= 0.99 for any set over 200 keys; the unused slots stay empty). The modulus
is prime because CRC is linear: for two keys of equal length, ``crc32(a, s) ^ crc32(b, s)``
is the same for every seed ``s``, so reducing modulo a power of two could never separate keys
whose CRCs differ only in high bits; modulo an odd prime the difference is never a multiple.

A lookup costs two CRCs over a few bytes, one list index and a string comparison: the key
stored at the slot is compared with the query, so a key outside the set gets ``None`` and
never another key's slot.

Two keys of equal length and equal CRC collide for *every* seed. When a key set contains such
a pair (about one 100,000-key set in seven; never seen among real symbols) the build switches
to *wide* mode, which folds ``adler32`` (not linear) into both hashes. Keys equal in length,
CRC and Adler-32 together cannot be separated: the build refuses them with
:class:`PerfectHashError` instead of looping. Otherwise a failed placement retries with the
next seed, so the build always terminates.

>>> ph = PerfectHash.build(["BTCUSDT", "ETHBTC", "BNBUSDT"])
>>> len({ph.slot(k) for k in ("BTCUSDT", "ETHBTC", "BNBUSDT")})
3
>>> ph.slot("BTCUSD") is None
True

Pure: no I/O, no threads, no clock, no logging. Immutable after build, so any number of
threads may call :meth:`slot` at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar
from zlib import adler32, crc32

from .errors import PerfectHashError, SymbolError

__all__ = ["PerfectHash"]

#: Displacements tried for one bucket before the whole build retries with a new seed.
MAX_DISPLACEMENTS = 1 << 16
#: Seeds tried before the build gives up (only reachable through pathological inputs).
MAX_SEEDS = 64


def _encode(key: str) -> bytes:
    try:
        return key.encode()
    except UnicodeEncodeError as exc:
        raise SymbolError(f"symbol is not valid Unicode: {key!r}") from exc


def _odd_prime_at_least(n: int) -> int:
    """The smallest odd prime >= n (trial division: n is a few thousand, at most millions)."""
    p = max(n, 3) | 1
    while any(p % f == 0 for f in range(3, int(p**0.5) + 1, 2)):
        p += 2
    return p


Keys = tuple[str | None, ...]


V = TypeVar("V")


def _fast_lookup(
    keys: Keys, disp: list[int], seed: int, values: Sequence[V]
) -> Callable[[str], V | None]:
    """Lookup for key sets whose (length, CRC) pairs are distinct: ``values[slot(key)]``.
    Locals are closure cells: cheaper than attribute loads on the hot path."""
    m = len(keys)

    def lookup(key: str) -> V | None:
        try:
            kb = key.encode()
        except UnicodeEncodeError:
            return None
        d = disp[crc32(kb, seed) % m]
        i = -d - 1 if d < 0 else crc32(kb, d) % m
        return values[i] if keys[i] == key else None

    return lookup


def _wide_lookup(
    keys: Keys, disp: list[int], seed: int, values: Sequence[V]
) -> Callable[[str], V | None]:
    """Lookup for key sets with a CRC collision: adler32 folded into both hashes."""
    m = len(keys)

    def lookup(key: str) -> V | None:
        try:
            kb = key.encode()
        except UnicodeEncodeError:
            return None
        a = adler32(kb)
        d = disp[(crc32(kb, seed) ^ a) % m]
        i = -d - 1 if d < 0 else (crc32(kb, d) ^ a) % m
        return values[i] if keys[i] == key else None

    return lookup


def _absent(key: str) -> None:
    return None


class PerfectHash:
    """A near-minimal perfect hash: n distinct keys -> distinct slots in ``0..size-1``.

    Runtime complexity: :meth:`build` expected O(n) (a few microseconds per key in Python);
    :meth:`slot` O(len(key)), in practice two CRCs and one comparison; memory O(n).
    """

    __slots__ = ("_disp", "_keys", "_n", "_seed", "_wide", "slot")

    slot: Callable[[str], int | None]
    """``slot(key)``: the key's slot in ``0..size-1``, or ``None`` if ``key`` is not in the set."""

    def __init__(self, keys: Keys, disp: list[int], seed: int, wide: bool) -> None:
        """Use :meth:`build`; this only wraps its result."""
        self._keys = keys  # key stored at each slot; None in the few unused slots
        self._disp = disp  # per bucket: displacement d >= 0, or -(slot + 1) for a singleton
        self._seed = seed
        self._wide = wide
        self._n = sum(k is not None for k in keys)
        self.slot = self.lookup_in(range(len(keys)))

    def lookup_in(self, values: Sequence[V]) -> Callable[[str], V | None]:
        """A function ``key -> values[slot(key)]`` (None for a key outside the set): one call
        per lookup, for a table that keeps one value per slot. O(1) per lookup."""
        if len(values) != len(self._keys):
            raise ValueError("one value per slot is needed")
        if not self._keys:
            return _absent
        factory = _wide_lookup if self._wide else _fast_lookup
        return factory(self._keys, self._disp, self._seed, values)

    def compiled_lookup_in(self, values: list[V | None]) -> Any:
        """:meth:`lookup_in` for the compiled per-trade path: a ``medianserv._native.Index``
        over ``values`` (its ``get`` is the same function, bit for bit, in C), or None where
        the compiled module was not built. O(size)."""
        if len(values) != len(self._keys):
            raise ValueError("one value per slot is needed")
        try:
            from . import _native  # type: ignore[attr-defined]
        except ImportError:
            return None
        return _native.Index(self._keys, list(self._disp), self._seed, self._wide, values)

    @classmethod
    def build(cls, keys: Iterable[str], *, first_seed: int = 0) -> PerfectHash:
        """Build a perfect hash over distinct ``keys``. Expected O(n).

        Raises :class:`PerfectHashError` on duplicate keys or keys no seed can separate, and
        :class:`SymbolError` on a key that is not valid Unicode.
        """
        key_list = list(keys)
        if len(set(key_list)) != len(key_list):
            raise PerfectHashError("duplicate keys")
        if not key_list:
            return cls((), [], 0, False)
        encoded = [_encode(k) for k in key_list]
        n = len(encoded)
        wide = len({(len(b), crc32(b)) for b in encoded}) < n
        extra = [adler32(b) for b in encoded] if wide else [0] * n
        if wide:
            seen: dict[tuple[int, int, int], str] = {}
            for k, b, a in zip(key_list, encoded, extra, strict=True):
                other = seen.setdefault((len(b), crc32(b), a), k)
                if other != k:
                    raise PerfectHashError(f"keys {other!r} and {k!r} hash identically")
        m = _odd_prime_at_least(n)
        for seed in range(first_seed, first_seed + MAX_SEEDS):
            placed = _place(encoded, extra, seed, m)
            if placed is not None:
                disp, slot_of = placed
                in_slots: list[str | None] = [None] * m
                for k, s in zip(key_list, slot_of, strict=True):
                    in_slots[s] = k
                return cls(tuple(in_slots), disp, seed, wide)
        raise PerfectHashError(f"no perfect hash found for {n} keys in {MAX_SEEDS} seeds")

    @property
    def keys(self) -> Keys:
        """The key stored in each slot (None where unused): ``keys[slot(k)] == k``. O(1)."""
        return self._keys

    @property
    def size(self) -> int:
        """Number of slots; ``len(self) / size`` is the load factor. O(1)."""
        return len(self._keys)

    def __len__(self) -> int:
        """Number of keys. O(1)."""
        return self._n

    def __repr__(self) -> str:
        mode = "wide" if self._wide else "fast"
        return f"<PerfectHash {self._n} keys in {self.size} slots, seed {self._seed}, {mode}>"

    def _check(self) -> None:
        """Assert that every key has its own slot. O(n); for tests."""
        present = [k for k in self._keys if k is not None]
        assert len(present) == self._n == len(set(present)), "a key stored twice"
        for i, key in enumerate(self._keys):
            if key is not None:
                assert self.slot(key) == i, f"{key!r} does not map to its slot {i}"
        assert all(-d - 1 < self.size for d in self._disp), "singleton slot out of range"
        assert self.size == 0 or self._n <= self.size == _odd_prime_at_least(self._n)


def _place(
    encoded: list[bytes], extra: list[int], seed: int, m: int
) -> tuple[list[int], list[int]] | None:
    """One placement attempt in ``m`` slots with ``seed``: (displacements, slot per key)."""
    buckets: list[list[int]] = [[] for _ in range(m)]
    for i, b in enumerate(encoded):
        buckets[(crc32(b, seed) ^ extra[i]) % m].append(i)
    disp = [0] * m
    slot_of = [0] * len(encoded)
    taken = bytearray(m)
    for j in sorted(range(m), key=lambda j: len(buckets[j]), reverse=True):
        members = buckets[j]
        if len(members) < 2:
            break
        for d in range(MAX_DISPLACEMENTS):
            slots = [(crc32(encoded[i], d) ^ extra[i]) % m for i in members]
            if len(set(slots)) == len(slots) and not any(taken[s] for s in slots):
                break
        else:
            return None
        disp[j] = d
        for i, s in zip(members, slots, strict=True):
            taken[s] = 1
            slot_of[i] = s
    free = (s for s in range(m) if not taken[s])
    for j, members in enumerate(buckets):
        if len(members) == 1:
            s = next(free)
            disp[j] = -s - 1
            slot_of[members[0]] = s
    return disp, slot_of
