"""XTS-AES-256 with dm-crypt ``aes-xts-plain64`` semantics, batched over many sectors.

IEEE 1619 — 5.3.1 defines, for the j-th 16-byte block of a data unit with tweak i::

    T_j = AES-enc(Key2, i) ⊗ alpha^j          (multiplication in GF(2^128))
    C_j = AES-enc(Key1, P_j ⊕ T_j) ⊕ T_j

and 5.4.1 the inverse with AES-dec(Key1) in the middle. dm-crypt's ``plain64`` IV makes
i the little-endian 64-bit sector number, counted in 512-byte units even when the sector
is 4096 bytes (the default without ``iv_large_sectors``): sector s of a 4096-byte-sector
device has i = 8·s.

Calling ``cryptography``'s XTS once per 4 KiB sector pays a context set-up per call and
holds the GIL between calls. Instead this module works on many sectors at once:

1. one AES-ECB pass of Key2 over a piece's tweak numbers gives every T_0;
2. numpy computes all T_j = T_0 ⊗ alpha^j (the costly part, see ``_Workspace.powers``);
3. ``dst = src ⊕ T``, one AES-ECB pass of Key1, ``dst = ecb ⊕ T`` (``SectorCipher._crypt``).

Every buffer is allocated once per thread and reused, and AES contexts are kept per thread:
a fresh multi-MiB result per call costs more in page faults than the AES itself. Large
``cryptography`` and numpy calls release the GIL, so step 2 on the caller's thread and
step 3 on a helper thread run in parallel (see ``SectorCipher._run`` for why this split).

The output is bit-identical to per-sector XTS; the NIST and IEEE 1619 vector tests prove it.
Only whole 16-byte blocks are supported: disk sectors never need ciphertext stealing
(IEEE 1619 — 5.3.2), so partial blocks raise ValueError.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from vmcrypt.crypto.exceptions import InvalidKey
from vmcrypt.crypto.keys import XTS_KEY_SIZE, check_key, constant_time_equal

__all__ = ["DM_TWEAK_UNIT", "SectorCipher", "xts_decrypt", "xts_encrypt"]

#: dm-crypt counts plain64 IVs in 512-byte units.
DM_TWEAK_UNIT = 512
_BLOCK = 16
_U64 = np.dtype("<u8")
# Tweaks are computed in pieces of about this many bytes of data. Measured here: numpy
# costs ~0.2 ns per element and operation whatever the array size (so fitting L2 buys
# nothing), plus ~1 µs per call (~25 calls per piece); 1 MiB beat 256 and 512 KiB.
# Single-threaded, each piece is encrypted right after its tweaks.
#: Calls of at most this many units take the per-unit path (see ``_run_small``).
_SMALL_UNITS = 8
_PIECE = 1 << 20
# With a helper thread, the helper encrypts jobs of about this many bytes (see _run): few
# long calls, so it seldom needs the GIL.
_JOB = 2 << 20
# Calls smaller than this run on one thread. Measured here: at 1 MiB one thread is ~10%
# faster than the pipeline (its fill and drain dominate), at 1.5 MiB the pipeline wins.
_MIN_SPLIT = 3 << 19
# Job-sized tweak buffers per caller: the helper encrypts one job while the caller
# computes the tweaks of the next.
_BUFFERS = 2
# Tweak columns 0.._HEAD-1 of every unit come straight from T_0 by one broadcast shift;
# the rest are built in groups of _GROUP columns, each group from the previous one.
_HEAD = 32
_GROUP = 64
# The tweak is a 64-bit plain64 sector number (the upper 64 bits of the 128-bit tweak
# block are zero).
_MAX_TWEAK = (1 << 64) - 1
# Workspaces and buffers kept per thread (one per unit size in use).
_MAX_SPACES = 4

U8Array = npt.NDArray[np.uint8]
U64Array = npt.NDArray[np.uint64]
Buffer = bytes | bytearray | memoryview | np.ndarray

if sys.byteorder != "little":  # pragma: no cover - vmcrypt targets x86-64 and arm64
    raise ImportError("vmcrypt.crypto.xts assumes a little-endian machine")

# Shift amounts for the head: row r holds T_0 ⊗ alpha^r for r < _HEAD.
_HEAD_SHIFT = np.arange(_HEAD, dtype=_U64).reshape(_HEAD, 1)
_HEAD_BACK = np.uint64(64) - _HEAD_SHIFT  # 64 - r; numpy defines x >> 64 == 0 for r = 0
# IEEE 1619 — 5.2: alpha^128 ≡ x^7 + x^2 + x + 1 (0x87), so bits that leave the top come back
# shifted by 0, 1, 2 and 7.
_FOLD = np.array([1, 2, 7], dtype=_U64).reshape(3, 1, 1)
_FOLD_LOW = np.array([0, 1, 2, 7], dtype=_U64).reshape(4, 1, 1)
_FOLD_HIGH = np.array([63, 62, 57], dtype=_U64).reshape(3, 1, 1)


def _times_alpha_pow(
    x: U64Array, k: U64Array | np.uint64, back: U64Array | np.uint64, w: U64Array, dst: U64Array
) -> None:
    """dst = x ⊗ alpha^k in GF(2^128), for shifts 0 <= k <= 57 (IEEE 1619 — 5.2, k doublings).

    ``x`` and ``dst`` stack the low and high 64-bit words: shape (2, ...). ``k`` may be an
    array that broadcasts against ``x`` (one shift per row); ``back`` is 64 - k. ``w`` is
    scratch of shape (7, ...). The 128-bit value shifts left by k and the k bits leaving the
    high word ("over") are folded back in as over ⊗ 0x87; while k <= 57 that product stays
    inside the low word. The terms are written side by side and combined by one XOR
    reduction: five numpy calls in all, as every call costs GIL traffic (see
    SectorCipher._run). ``x`` and ``dst`` must not overlap.
    """
    # Rows: 0 lo<<k | 1 over | 2-4 over<<1, <<2, <<7 | 5 hi<<k | 6 lo>>(64-k)
    np.left_shift(x, k, out=w[0:6:5])
    np.right_shift(x, back, out=w[6:0:-5])
    np.left_shift(w[1:2], _FOLD, out=w[2:5])
    np.bitwise_xor.reduce(w[0:5], axis=0, out=dst[0])
    np.bitwise_xor(w[5], w[6], out=dst[1])


def _times_alpha64(x: U64Array, w: U64Array, dst: U64Array) -> None:
    """dst = x ⊗ alpha^64 (IEEE 1619 — 5.2 applied 64 times); stacked words as above.

    Shifting by a whole word moves lo up and pushes all of hi out; hi ⊗ 0x87 is up to 71
    bits, so its bits 64..70 (hi >> 63, >> 62, >> 57) land in the new high word. ``w`` is
    scratch of shape (4, ...).
    """
    hi = x[1:2]
    np.left_shift(hi, _FOLD_LOW, out=w)
    np.bitwise_xor.reduce(w, axis=0, out=dst[0])
    np.right_shift(hi, _FOLD_HIGH, out=w[:3])
    np.bitwise_xor.reduce(w[:3], axis=0, out=dst[1])
    np.bitwise_xor(dst[1], x[0], out=dst[1])


def _interleave(planes: U64Array, tweaks: U64Array) -> None:
    """Copy planes (group, word, unit, column) into the data's (unit, block, word) layout."""
    groups, _, units, width = planes.shape
    blocks = tweaks.shape[1]
    if blocks == groups * width:
        grouped = tweaks.reshape(units, groups, width, 2)
        np.copyto(grouped[..., 0], planes[:, 0].transpose(1, 0, 2))
        np.copyto(grouped[..., 1], planes[:, 1].transpose(1, 0, 2))
    else:  # a partial last group
        for n in range(groups):
            a = n * width
            w = min(width, blocks - a)
            np.copyto(tweaks[:, a : a + w, :], planes[n, :, :, :w].transpose(1, 2, 0))


class _Workspace:
    """One thread's scratch for computing tweaks of ``blocks``-block units.

    Pieces of up to ``units`` units; results go to job buffers of ``job`` units each.
    Reused for every piece so the hot loop allocates nothing. The low and high words are
    kept in separate planes, so every numpy call runs over contiguous memory; they are
    interleaved into the data's layout only when a piece is encrypted.
    """

    def __init__(self, units: int, job: int, blocks: int) -> None:
        self.units = units
        self.job = job
        self.blocks = blocks
        head = min(blocks, _HEAD)
        width = min(blocks, _GROUP)
        groups = -(-blocks // _GROUP)
        self.index = np.arange(units, dtype=_U64)
        self.numbers = np.zeros((units, 2), dtype=_U64)
        self.t0 = np.empty(units * _BLOCK + _BLOCK, dtype=np.uint8)
        self.x0 = np.empty((2, 1, units), dtype=_U64)
        # Head, power-major (one row per power r) so the broadcast runs along long rows.
        self.head = np.empty((7, head, units), dtype=_U64)
        self.head_out = np.empty((2, head, units), dtype=_U64)
        self.scratch = np.empty((7, units, width), dtype=_U64)
        # Job buffers: group g, plane 0/1 (low/high words), unit, column c holds T_{64g+c}.
        # Separate groups let numpy see that a step's input and output do not overlap
        # (else it copies the input first).
        self.planes = np.empty((_BUFFERS, groups, 2, job, width), dtype=_U64)

    def powers(self, t0: U64Array, planes: U64Array) -> None:
        """Write T_j = T_0 ⊗ alpha^j for every block j of each unit into ``planes``.

        ``t0`` is (units, 2): AES-enc(Key2, i) of each unit (IEEE 1619 — 5.3.1); ``planes``
        is (groups, 2, units, width). Built in three stages: columns 0-31 by one broadcast
        shift of T_0; columns 32-63 as columns 0-31 ⊗ alpha^32; then each group of 64 columns
        as the previous group ⊗ alpha^64 — except the last group, which ``_finish_powers``
        computes on the thread that encrypts (it balances the two pipeline stages).
        """
        units = t0.shape[0]
        blocks = self.blocks
        head = min(blocks, _HEAD)
        x0 = self.x0[:, :, :units]
        np.copyto(x0[:, 0, :], t0.T)
        hd = self.head_out[:, :head, :units]
        hw = self.head[:, :head, :units]
        _times_alpha_pow(x0, _HEAD_SHIFT[:head], _HEAD_BACK[:head], hw, hd)
        np.copyto(planes[0, :, :, :head], hd.transpose(0, 2, 1))
        if blocks > _HEAD:
            w = min(_GROUP - _HEAD, blocks - _HEAD)
            _times_alpha_pow(
                planes[0, :, :, :w],
                np.uint64(_HEAD),
                np.uint64(64 - _HEAD),
                self.scratch[:, :units, :w],
                planes[0, :, :, _HEAD : _HEAD + w],
            )
        for n in range(1, planes.shape[0] - 1):
            _times_alpha64(planes[n - 1], self.scratch[:4, :units], planes[n])


def _finish_powers(planes: U64Array, blocks: int, scratch: U64Array) -> None:
    """Compute the last group of ``planes`` from the one before (see _Workspace.powers)."""
    groups, _, units, _ = planes.shape
    if groups > 1:
        w = blocks - (groups - 1) * _GROUP
        _times_alpha64(planes[-2, :, :, :w], scratch[:, :units, :w], planes[-1, :, :, :w])


class _CryptBuffers:
    """One thread's buffers for step 3: interleaved tweaks and the AES-ECB output."""

    def __init__(self, units: int, blocks: int) -> None:
        self.units = units
        self.blocks = blocks
        self.scratch = np.empty((4, units, min(blocks, _GROUP)), dtype=_U64)
        self.tweaks = np.empty((units, blocks, 2), dtype=_U64)
        # update_into wants one block of slack after the output.
        self.ecb = np.empty(units * blocks * _BLOCK + _BLOCK, dtype=np.uint8)


class _Contexts:
    """One thread's AES-ECB contexts for one key; ECB keeps no state between whole blocks."""

    def __init__(self, k1: algorithms.AES, k2: algorithms.AES) -> None:
        # ECB is XTS's block step here: every block is masked with its own tweak around it
        # (IEEE 1619 — 5.3.1), so equal plaintext blocks never give equal ciphertext.
        self.enc1: CipherContext = Cipher(k1, modes.ECB()).encryptor()  # noqa: S305
        self.dec1: CipherContext = Cipher(k1, modes.ECB()).decryptor()  # noqa: S305
        self.enc2: CipherContext = Cipher(k2, modes.ECB()).encryptor()  # noqa: S305


class SectorCipher:
    """Encrypts and decrypts runs of whole data units (sectors) under one XTS key.

    ``unit_size`` is the data unit (4096 for vmcrypt disks); ``tweak_step`` is how much
    the tweak number grows per unit (8 for dm-crypt's 512-byte IV counting with 4096-byte
    sectors, 1 for NIST's data-unit sequence numbers); ``threads`` caps how many threads
    one call uses (default: 2, or 1 on a single-core machine; more than 2 gains nothing,
    as there is one helper stage). Thread-safe: calls share only the key; scratch space
    (about 10 MiB per thread that has used it) and AES contexts are per thread.
    """

    def __init__(
        self,
        key: bytes,
        *,
        unit_size: int = 4096,
        tweak_step: int | None = None,
        threads: int | None = None,
    ) -> None:
        key = check_key(key, XTS_KEY_SIZE, "XTS-AES-256 key")
        if constant_time_equal(key[:32], key[32:]):
            # IEEE 1619-2018 — 5.1: Key1 and Key2 must differ.
            raise InvalidKey("the two halves of an XTS key must differ")
        if unit_size <= 0 or unit_size % _BLOCK:
            raise ValueError("the data unit size must be a positive multiple of 16 bytes")
        if tweak_step is not None and tweak_step <= 0:
            raise ValueError("the tweak step must be positive")
        if threads is not None and threads < 1:
            raise ValueError("threads must be at least 1")
        self._k1 = algorithms.AES(key[:32])
        self._k2 = algorithms.AES(key[32:])
        self._both = algorithms.AES(key)
        self.unit_size = unit_size
        self.tweak_step = (
            tweak_step if tweak_step is not None else max(1, unit_size // DM_TWEAK_UNIT)
        )
        self._blocks = unit_size // _BLOCK
        self._threads = threads if threads is not None else min(2, os.cpu_count() or 1)
        self._per_piece = max(1, _PIECE // unit_size)
        self._per_job = max(1, _JOB // unit_size)
        self._min_split = _MIN_SPLIT
        self._tls = threading.local()

    # -- public -------------------------------------------------------------------
    def encrypt(self, data: Buffer, first_unit: int) -> bytes:
        """Encrypt whole units; unit ``first_unit`` gets tweak ``first_unit * tweak_step``."""
        return self._to_bytes(data, first_unit, encrypt=True)

    def decrypt(self, data: Buffer, first_unit: int) -> bytes:
        """Decrypt whole units; the inverse of :meth:`encrypt` at the same position."""
        return self._to_bytes(data, first_unit, encrypt=False)

    def encrypt_into(self, src: Buffer, dst: np.ndarray, first_unit: int) -> None:
        """Encrypt ``src`` into the preallocated uint8 array ``dst`` (may be ``src``)."""
        self._run(_as_u8(src), dst, first_unit, encrypt=True)

    def decrypt_into(self, src: Buffer, dst: np.ndarray, first_unit: int) -> None:
        """Decrypt ``src`` into the preallocated uint8 array ``dst`` (may be ``src``)."""
        self._run(_as_u8(src), dst, first_unit, encrypt=False)

    # -- internals ------------------------------------------------------------------
    def _to_bytes(self, data: Buffer, first_unit: int, *, encrypt: bool) -> bytes:
        if isinstance(data, bytes) and self._is_small(data, first_unit):
            # bytes in, bytes out, no numpy: the lean path of random 4 KiB I/O
            return self._small_bytes(data, first_unit, encrypt=encrypt)
        src = _as_u8(data)
        out = np.empty_like(src)
        self._run(src, out, first_unit, encrypt=encrypt)
        return out.tobytes()

    def _check(self, src: U8Array, dst: np.ndarray, first_unit: int) -> U8Array:
        """Validate a call's arguments; return ``dst`` as a flat uint8 array."""
        us = self.unit_size
        if src.size % us:
            raise ValueError(f"XTS data must be whole {us}-byte units, got {src.size} bytes")
        if (
            dst.dtype != np.uint8
            or dst.size != src.size
            or not dst.flags.c_contiguous
            or not dst.flags.writeable
        ):
            raise ValueError(
                "the output must be a writable contiguous uint8 array of the input's size"
            )
        out: U8Array = dst.reshape(-1)
        if np.may_share_memory(src, out) and src.ctypes.data != out.ctypes.data:
            # Pieces are processed in parallel: only exact in-place use is safe.
            raise ValueError("the output must be the input itself or not overlap it")
        if first_unit < 0:
            raise ValueError("the first unit number must not be negative")
        units = src.size // us
        if units and (first_unit + units - 1) * self.tweak_step > _MAX_TWEAK:
            raise ValueError("sector number out of range for a 64-bit plain64 IV")
        return out

    def _run(self, src: U8Array, dst: np.ndarray, first_unit: int, *, encrypt: bool) -> None:
        out = self._check(src, dst, first_unit)
        units = src.size // self.unit_size
        if units == 0:
            return
        if units <= _SMALL_UNITS:
            self._run_small(src, out, first_unit, units, encrypt=encrypt)
            return
        if self._threads < 2 or units * self.unit_size < self._min_split:
            per_piece = min(self._per_piece, units)
            ws = _workspace(per_piece, per_piece, self._blocks)
            for a in range(0, units, per_piece):
                b = min(units, a + per_piece)
                planes = ws.planes[0, :, :, : b - a]
                self._tweaks(ws, first_unit + a, planes)
                self._crypt(src, out, range(a, b), planes, encrypt=encrypt)
            return
        # Two-stage pipeline. numpy releases the GIL only inside each call, and on a
        # virtual machine handing the GIL between two threads that both make many short
        # calls costs more than the calls themselves (measured here: two such threads
        # together ran slower than one). So this thread makes all the short calls (the
        # tweaks of job n, piece by piece) while a helper makes ~10 long ones over job n-1
        # (last tweak group, interleave, XOR, AES-ECB, XOR) and seldom needs the GIL; the
        # two stages cost about the same (~300 and ~370 µs per MiB alone). The last job is
        # split between the two threads so neither idles at the end.
        # A job that the shared helper has not started when its buffer is needed again (it
        # is busy with another caller, or this is a forked child without the thread) is
        # taken back and run here: no caller waits on another caller's work, so concurrent
        # calls, even from the helper thread itself, cannot deadlock.
        half = -(-units // 2)
        per_piece = min(self._per_piece, half)
        per_job = max(per_piece, min(self._per_job, half))
        ws = _workspace(per_piece, per_job, self._blocks)
        pool = _pool()
        pending: deque[tuple[Future[None], range, U64Array]] = deque()
        try:
            for n, a in enumerate(range(0, units, per_job)):
                b = min(units, a + per_job)
                if len(pending) == _BUFFERS:
                    self._settle(pending.popleft(), src, out, encrypt=encrypt)
                planes = ws.planes[n % _BUFFERS, :, :, : b - a]
                self._tweaks(ws, first_unit + a, planes)
                mid = b if b < units else a + (b - a) // 2
                if mid > a:
                    head = planes[:, :, : mid - a]
                    span = range(a, mid)
                    try:
                        job = pool.submit(self._crypt, src, out, span, head, encrypt=encrypt)
                    except RuntimeError:  # the pool is shut down: the interpreter is exiting
                        self._crypt(src, out, span, head, encrypt=encrypt)
                    else:
                        pending.append((job, span, head))
                if mid < b:
                    self._crypt(src, out, range(mid, b), planes[:, :, mid - a :], encrypt=encrypt)
        finally:
            while pending:
                self._settle(pending.popleft(), src, out, encrypt=encrypt)

    def _is_small(self, data: bytes, first_unit: int) -> bool:
        """True for a valid call small enough for the per-unit path (bytes in, bytes out)."""
        us = self.unit_size
        return (
            0 < len(data) <= _SMALL_UNITS * us
            and len(data) % us == 0
            and first_unit >= 0
            and (first_unit + len(data) // us - 1) * self.tweak_step <= _MAX_TWEAK
        )

    def _small_bytes(self, data: bytes, first_unit: int, *, encrypt: bool) -> bytes:
        us = self.unit_size
        parts = []
        for i in range(len(data) // us):
            tweak = ((first_unit + i) * self.tweak_step).to_bytes(16, "little")
            ctx = Cipher(self._both, modes.XTS(tweak))
            op = ctx.encryptor() if encrypt else ctx.decryptor()
            parts.append(op.update(data[i * us : (i + 1) * us]))
        return b"".join(parts)

    def _run_small(
        self, src: U8Array, out: U8Array, first_unit: int, units: int, *, encrypt: bool
    ) -> None:
        """One ``cryptography`` XTS call per unit: for a few sectors (random 4 KiB I/O) its
        ~4 µs per call beats the batched path's fixed cost of some 25 numpy calls."""
        done = self._small_bytes(src.tobytes(), first_unit, encrypt=encrypt)
        out[: units * self.unit_size] = np.frombuffer(done, dtype=np.uint8)

    def _settle(
        self,
        entry: tuple[Future[None], range, U64Array],
        src: U8Array,
        dst: U8Array,
        *,
        encrypt: bool,
    ) -> None:
        """Wait for a submitted job, or run it on this thread if the helper has not begun."""
        job, span, planes = entry
        if job.cancel():
            self._crypt(src, dst, span, planes, encrypt=encrypt)
        else:
            job.result()

    def _contexts(self) -> _Contexts:
        ctx: _Contexts | None = getattr(self._tls, "ctx", None)
        if ctx is None:
            ctx = _Contexts(self._k1, self._k2)
            self._tls.ctx = ctx
        return ctx

    def _tweaks(self, ws: _Workspace, first_unit: int, planes: U64Array) -> None:
        """Fill ``planes`` (group, word, unit, column) with the tweaks of units from
        ``first_unit`` on, one piece at a time."""
        enc2 = self._contexts().enc2
        step = np.uint64(self.tweak_step)
        units = planes.shape[2]
        for a in range(0, units, ws.units):
            n = min(ws.units, units - a)
            # IEEE 1619 — 5.3.1 step 1: T_0 = AES-enc(Key2, i), i as a 128-bit
            # little-endian number whose high 64 bits stay zero.
            numbers = ws.numbers[:n, 0]
            np.multiply(ws.index[:n], step, out=numbers)
            np.add(numbers, np.uint64((first_unit + a) * self.tweak_step), out=numbers)
            enc2.update_into(ws.numbers[:n].reshape(-1).view(np.uint8).data, ws.t0.data)
            ws.powers(ws.t0[: n * _BLOCK].view(_U64).reshape(n, 2), planes[:, :, a : a + n])

    def _crypt(
        self, src: U8Array, dst: U8Array, span: range, planes: U64Array, *, encrypt: bool
    ) -> None:
        """Units ``span`` of ``src`` into ``dst`` given their tweak planes.

        IEEE 1619 — 5.3.1 (5.4.1 to decrypt) steps 2-4 for every block at once:
        PP = P ⊕ T, CC = AES(Key1, PP), C = CC ⊕ T.
        """
        us = self.unit_size
        a, b = span.start, span.stop
        units = b - a
        bufs = _crypt_buffers(units, self._blocks)
        tweaks = bufs.tweaks[:units]
        _finish_powers(planes, self._blocks, bufs.scratch)
        _interleave(planes, tweaks)
        piece_src = src[a * us : b * us]
        piece_dst = dst[a * us : b * us]
        dst_words = piece_dst.view(_U64).reshape(tweaks.shape)
        np.bitwise_xor(piece_src.view(_U64).reshape(tweaks.shape), tweaks, out=dst_words)
        ctx = self._contexts()
        op = ctx.enc1 if encrypt else ctx.dec1
        op.update_into(piece_dst.data, bufs.ecb.data)
        mid = bufs.ecb[: piece_dst.size].view(_U64).reshape(tweaks.shape)
        np.bitwise_xor(mid, tweaks, out=dst_words)


_local = threading.local()
_pool_lock = threading.Lock()
_pool_instance: ThreadPoolExecutor | None = None


def _workspace(units: int, job: int, blocks: int) -> _Workspace:
    """This thread's tweak workspace for ``blocks``-block units, grown to the sizes needed.

    Kept per unit size, so a thread serving ciphers of two unit sizes does not rebuild
    it on every call; the few kept are dropped when unusually many sizes come along.
    """
    spaces: dict[int, _Workspace] | None = getattr(_local, "spaces", None)
    if spaces is None:
        spaces = _local.spaces = {}
    ws = spaces.get(blocks)
    if ws is None or ws.units < units or ws.job < job:
        if len(spaces) >= _MAX_SPACES:
            spaces.clear()
        if ws is not None:
            units, job = max(units, ws.units), max(job, ws.job)
        ws = spaces[blocks] = _Workspace(units, job, blocks)
    return ws


def _crypt_buffers(units: int, blocks: int) -> _CryptBuffers:
    """This thread's step-3 buffers for ``blocks``-block units, grown to ``units`` if needed."""
    kept: dict[int, _CryptBuffers] | None = getattr(_local, "crypt", None)
    if kept is None:
        kept = _local.crypt = {}
    bufs = kept.get(blocks)
    if bufs is None or bufs.units < units:
        if len(kept) >= _MAX_SPACES:
            kept.clear()
        bufs = kept[blocks] = _CryptBuffers(units, blocks)
    return bufs


def _pool() -> ThreadPoolExecutor:
    """The helper threads shared by all ciphers: one fewer than the cores (at least one)."""
    global _pool_instance  # noqa: PLW0603 - one lazily created pool per process
    with _pool_lock:
        if _pool_instance is None:
            _pool_instance = ThreadPoolExecutor(
                max_workers=max(1, (os.cpu_count() or 2) - 1), thread_name_prefix="vmcrypt-xts"
            )
        return _pool_instance


def _as_u8(data: Buffer) -> U8Array:
    if isinstance(data, np.ndarray):
        if not data.flags.c_contiguous:
            raise ValueError("XTS input arrays must be C-contiguous")
        return data.reshape(-1).view(np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


def xts_encrypt(key: bytes, data: bytes, *, unit_size: int, first_tweak: int) -> bytes:
    """Encrypt units with consecutive tweak numbers starting at ``first_tweak``."""
    cipher = SectorCipher(key, unit_size=unit_size, tweak_step=1, threads=1)
    return cipher.encrypt(data, first_tweak)


def xts_decrypt(key: bytes, data: bytes, *, unit_size: int, first_tweak: int) -> bytes:
    """Decrypt units with consecutive tweak numbers starting at ``first_tweak``."""
    cipher = SectorCipher(key, unit_size=unit_size, tweak_step=1, threads=1)
    return cipher.decrypt(data, first_tweak)
