"""``vmcrypt disk``: the low-level tool for one encrypted or raw disk.

Keys come from KEK files (``--kek-file``); the tool unwraps the DEK from the disk's
keySafe itself and keeps it in memory only. Every command prints a table for people or,
with ``--json``, one JSON document for scripts. Long jobs show a progress bar with
throughput and ETA on stderr.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from vmcrypt.cli.keyfiles import (
    FILE_PROVIDER,
    kek_key_id,
    load_kek,
    new_kek,
    resolver,
    write_secret_file,
)
from vmcrypt.cli.output import err, print_json, print_record, progress_bar
from vmcrypt.crypto.exceptions import IntegrityError
from vmcrypt.crypto.keys import generate_xts_key
from vmcrypt.crypto.keysafe import KeySafe, open_keysafe, rewrap_keysafe, seal_keysafe
from vmcrypt.disk import container, convert, luks2
from vmcrypt.disk.exceptions import ConversionInProgress, WrongKeyError
from vmcrypt.disk.files import header_path
from vmcrypt.exceptions import UsageError, VmcryptError

app = typer.Typer(
    help=(
        "Work on one disk: create, inspect, encrypt, decrypt, re-key, read and write. "
        "An encrypted disk is NAME.img (ciphertext) plus NAME.img.luks (its LUKS2 header "
        "holding the keySafe); a raw disk is NAME.img alone."
    ),
    no_args_is_help=True,
)

PathArg = Annotated[Path, typer.Argument(help="The disk's data file (NAME.img).")]
KekOpt = Annotated[
    Path | None,
    typer.Option("--kek-file", "-k", help="File with the KEK (32 raw bytes or 64 hex chars)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document for scripts.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
KeyIdOpt = Annotated[
    str | None,
    typer.Option(
        "--key-id", help="KEK ID to record in the keySafe (default: the KEK's check value)."
    ),
]
ProviderOpt = Annotated[
    str, typer.Option("--provider-id", help="Key provider ID to record in the keySafe.")
]

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """Parse 4096, 512M, 1G, 1GiB, 10T (binary units)."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmgtb]?)(?:i?b)?\s*", text.lower())
    if not match:
        raise UsageError(f"cannot read size {text!r}: use a number with an optional K, M, G or T")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _need_kek(kek_file: Path | None) -> bytes:
    if kek_file is None:
        raise UsageError("this disk is encrypted: give its KEK with --kek-file FILE")
    return load_kek(kek_file)


def _need_data(path: Path) -> None:
    if path.exists():
        return
    if header_path(path).exists():
        raise UsageError(
            f"{path}: no such data file, although its header {header_path(path)} exists; "
            "check the path (was the data file moved or renamed?)"
        )
    raise UsageError(f"{path}: no such data file; check the path")


def _keysafe_of(path: Path) -> KeySafe:
    if not path.exists() and not header_path(path).exists():
        raise UsageError(
            f"no disk at {path}: neither {path} nor {header_path(path)} exists; check the path"
        )
    keysafe = container.read_keysafe(path)
    if keysafe is None:
        raise UsageError(
            f"{path} has no vmcrypt keySafe (a LUKS2 disk made by another tool); "
            "it cannot be opened with a KEK"
        )
    return keysafe


class _KekDoesNotFit(IntegrityError):
    """The opaque IntegrityError (exit code 4), but naming the disk and the KEK it needs."""

    def __init__(self, path: Path, kek_file: Path | None, kek: bytes, keysafe: KeySafe) -> None:
        wanted = "the KEK it was made with"
        if keysafe.key_id:
            wanted = f"the KEK with key ID {keysafe.key_id}"
        VmcryptError.__init__(
            self,
            f"the KEK in {kek_file} (key ID {kek_key_id(kek)}) does not open the keySafe of "
            f"{path}: the key is wrong or the keySafe was altered; use {wanted} "
            f"from provider {keysafe.provider_id}",
        )


def _unwrap(path: Path, kek_file: Path | None, kek: bytes, keysafe: KeySafe) -> bytes:
    try:
        return open_keysafe(keysafe, kek)
    except IntegrityError:
        raise _KekDoesNotFit(path, kek_file, kek, keysafe) from None


def _dek(path: Path, kek_file: Path | None) -> bytes:
    keysafe = _keysafe_of(path)
    return _unwrap(path, kek_file, _need_kek(kek_file), keysafe)


def _keysafe_view(keysafe: KeySafe | None) -> dict[str, Any] | None:
    """What ``info`` may show of a keySafe: names, IDs and sizes, never key bytes."""
    if keysafe is None:
        return None
    return {
        "provider_id": keysafe.provider_id,
        "key_id": keysafe.key_id,
        "wrapped_kek": f"{len(keysafe.wrapped_kek)} bytes" if keysafe.wrapped_kek else None,
        "wrapped_dek": f"{len(keysafe.wrapped_dek)} bytes",
        "kek_algorithm": keysafe.kek_algorithm,
        "wrap_algorithm": keysafe.wrap_algorithm,
        "dek_algorithm": keysafe.dek_algorithm,
        "created_at": keysafe.created_at,
    }


def _done(as_json: bool, message: str, data: dict[str, Any]) -> None:
    if as_json:
        print_json(data)
    else:
        err.print(f"[green]✓[/] {escape(message)}", highlight=False)


def _seal(kek: bytes, dek: bytes, provider_id: str, key_id: str | None) -> KeySafe:
    return seal_keysafe(
        kek=kek, dek=dek, provider_id=provider_id, key_id=key_id or kek_key_id(kek)
    )


@app.command("new-kek")
def new_kek_cmd(
    file: Annotated[Path, typer.Argument(help="Where to create the KEK file (mode 0600).")],
    as_json: JsonOpt = False,
) -> None:
    """Create a KEK file with a fresh random AES-256 key (for tests and offline use)."""
    kek = new_kek()
    write_secret_file(file, kek)
    _done(as_json, f"wrote a new KEK to {file} (key ID {kek_key_id(kek)})",
          {"file": str(file), "key_id": kek_key_id(kek)})


@app.command()
def create(
    path: PathArg,
    *,
    size: Annotated[str, typer.Option("--size", "-s", help="Size, e.g. 10G; a multiple of 4 KiB.")],
    kek_file: KekOpt = None,
    raw: Annotated[bool, typer.Option("--raw", help="Create an unencrypted disk.")] = False,
    eager_zero: Annotated[
        bool, typer.Option("--eager-zero", help="Write every sector now instead of thin.")
    ] = False,
    label: Annotated[str, typer.Option(help="LUKS2 label.")] = "",
    provider_id: ProviderOpt = FILE_PROVIDER,
    key_id: KeyIdOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Create a disk: encrypted with a new DEK wrapped by the KEK, or --raw."""
    nbytes = parse_size(size)
    if raw:
        container.create_raw(path, size=nbytes).close()
        _done(as_json, f"created raw disk {path} ({nbytes} bytes)",
              {"path": str(path), "size": nbytes, "encrypted": False})
        return
    kek = _need_kek(kek_file)
    dek = generate_xts_key()
    keysafe = _seal(kek, dek, provider_id, key_id)
    with progress_bar("zeroing", enabled=eager_zero and not (quiet or as_json)) as bar:
        container.create_encrypted(
            path, size=nbytes, dek=dek, keysafe=keysafe, label=label,
            eager_zero=eager_zero, progress=bar,
        ).close()
    _done(as_json, f"created encrypted disk {path} ({nbytes} bytes, header {header_path(path)})",
          {"path": str(path), "size": nbytes, "encrypted": True,
           "header": str(header_path(path)), "keysafe": _keysafe_view(keysafe)})


@app.command()
def info(path: PathArg, as_json: JsonOpt = False) -> None:
    """Show a disk's state, header and keySafe fields (never key bytes)."""
    _need_data(path)
    data: dict[str, Any] = {"path": str(path), "size": path.stat().st_size}
    journal = convert.pending(path)
    data["conversion"] = (
        None if journal is None
        else {"operation": journal.operation, "percent": round(journal.percent, 1)}
    )
    if container.is_encrypted(path):
        header = container.read_header(path)
        keysafe = KeySafe.from_dict(header.keysafe) if header.keysafe is not None else None
        segment = header.metadata["segments"]["0"]
        data.update(
            encrypted=True,
            header=str(header_path(path)),
            uuid=header.uuid,
            label=header.label,
            seqid=header.seqid,
            cipher=segment.get("encryption"),
            sector_size=header.sector_size,
            data_offset=header.data_offset,
            keyslots=sorted(header.metadata.get("keyslots", {})),
            keysafe=_keysafe_view(keysafe),
        )
    else:
        data["encrypted"] = journal is not None and journal.operation == "encrypt"
    if as_json:
        print_json(data)
        return
    flat = {k: v for k, v in data.items() if k not in ("keysafe", "conversion")}
    if data["conversion"]:
        flat["conversion"] = (
            f"{data['conversion']['operation']} interrupted at {data['conversion']['percent']}% "
            f"— run `vmcrypt disk resume {path}`"
        )
    print_record(f"disk {path}", flat)
    if data.get("keysafe"):
        print_record("keySafe", data["keysafe"])


@app.command()
def encrypt(
    path: PathArg,
    *,
    kek_file: KekOpt = None,
    provider_id: ProviderOpt = FILE_PROVIDER,
    key_id: KeyIdOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Encrypt a raw disk in place (crash-safe; `resume` finishes it if interrupted)."""
    _need_data(path)
    kek = _need_kek(kek_file)
    dek = generate_xts_key()
    keysafe = _seal(kek, dek, provider_id, key_id)
    with progress_bar("encrypting", enabled=not (quiet or as_json)) as bar:
        convert.encrypt_disk(path, dek=dek, keysafe=keysafe, progress=bar)
    _done(as_json, f"encrypted {path}", {"path": str(path), "encrypted": True,
                                          "keysafe": _keysafe_view(keysafe)})


@app.command()
def decrypt(path: PathArg, kek_file: KekOpt = None, as_json: JsonOpt = False,
            quiet: QuietOpt = False) -> None:
    """Decrypt a disk in place back to a raw file; its header is removed at the end."""
    dek = _dek(path, kek_file)
    with progress_bar("decrypting", enabled=not (quiet or as_json)) as bar:
        convert.decrypt_disk(path, dek=dek, progress=bar)
    _done(as_json, f"decrypted {path}", {"path": str(path), "encrypted": False})


@app.command()
def rekey(
    path: PathArg,
    *,
    kek_file: KekOpt = None,
    shallow: Annotated[bool, typer.Option("--shallow", help="New KEK, same DEK: O(1).")] = False,
    deep: Annotated[bool, typer.Option("--deep", help="New DEK: re-encrypt all data.")] = False,
    new_kek_file: Annotated[
        Path | None, typer.Option("--new-kek-file", help="The new KEK (required for --shallow).")
    ] = None,
    provider_id: ProviderOpt = FILE_PROVIDER,
    new_key_id: Annotated[
        str | None, typer.Option("--new-key-id", help="ID of the new KEK.")
    ] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Re-key: --shallow re-wraps the DEK under a new KEK; --deep re-encrypts under a new DEK."""
    if shallow == deep:
        raise UsageError("choose exactly one of --shallow and --deep")
    kek = _need_kek(kek_file)
    keysafe = _keysafe_of(path)
    dek = _unwrap(path, kek_file, kek, keysafe)
    if shallow:
        if new_kek_file is None:
            raise UsageError("--shallow needs --new-kek-file: the KEK to re-wrap the DEK under")
        new = load_kek(new_kek_file)
        new_keysafe = rewrap_keysafe(
            keysafe, old_kek=kek, new_kek=new, provider_id=provider_id,
            key_id=new_key_id or kek_key_id(new),
        )
        convert.shallow_rekey(path, dek=dek, new_keysafe=new_keysafe)
    else:
        new = load_kek(new_kek_file) if new_kek_file else kek
        new_dek = generate_xts_key()
        new_keysafe = _seal(new, new_dek, provider_id, new_key_id)
        with progress_bar("re-encrypting", enabled=not (quiet or as_json)) as bar:
            convert.deep_rekey(path, old_dek=dek, new_dek=new_dek, new_keysafe=new_keysafe,
                               progress=bar)
    _done(as_json, f"{'shallow' if shallow else 'deep'} re-key of {path} done",
          {"path": str(path), "mode": "shallow" if shallow else "deep",
           "keysafe": _keysafe_view(new_keysafe)})


@app.command()
def resume(
    path: PathArg,
    kek_file: KekOpt = None,
    new_kek_file: Annotated[
        Path | None,
        typer.Option("--new-kek-file", help="Also try this KEK (deep re-key to a new KEK)."),
    ] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Finish a conversion that was interrupted (killed, cancelled, power loss)."""
    _need_data(path)
    journal = convert.pending(path)
    if journal is None:
        _done(as_json, f"{path}: nothing to resume", {"path": str(path), "resumed": None})
        return
    keks = [_need_kek(kek_file)] + ([load_kek(new_kek_file)] if new_kek_file else [])
    with progress_bar(f"resuming {journal.operation}", enabled=not (quiet or as_json)) as bar:
        operation = convert.resume(path, resolve_dek=resolver(keks), progress=bar)
        if bar:  # the repair of the in-flight chunk alone reports no progress
            bar(journal.size, journal.size)
    _done(as_json, f"{operation} of {path} completed", {"path": str(path), "resumed": operation})


def _open(path: Path, kek_file: Path | None, *, writable: bool) -> container.Disk:
    _need_data(path)
    if container.is_encrypted(path):
        return container.open_encrypted(path, dek=_dek(path, kek_file), writable=writable)
    return container.open_raw(path, writable=writable)


@app.command()
def read(
    path: PathArg,
    kek_file: KekOpt = None,
    offset: Annotated[str, typer.Option(help="Start byte (size suffixes allowed).")] = "0",
    length: Annotated[str | None, typer.Option(help="Bytes to read (default: to the end).")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File (default stdout).")
    ] = None,
) -> None:
    """Read plaintext bytes from a disk to a file or stdout."""
    start = parse_size(offset)
    with _open(path, kek_file, writable=False) as disk:
        count = disk.size - start if length is None else parse_size(length)
        # Checked before the output file is created: an offset past the end must fail,
        # not print nothing and succeed.
        if start > disk.size or start + count > disk.size:
            what = "from" if length is None else f"{count} bytes at"
            raise UsageError(
                f"cannot read {what} offset {start}: {path} is only {disk.size} bytes; "
                "give an --offset and --length inside the disk"
            )
        # Plaintext of an encrypted disk: a new output file is private (0600) like a DEK.
        sink = (
            open(os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")  # noqa: SIM115
            if output else sys.stdout.buffer
        )
        try:
            pos = 0
            while pos < count:
                step = min(container.PIECE, count - pos)
                sink.write(disk.read(start + pos, step))
                pos += step
        finally:
            if output:
                sink.close()
            else:
                sink.flush()


@app.command()
def write(
    path: PathArg,
    kek_file: KekOpt = None,
    offset: Annotated[str, typer.Option(help="Start byte (size suffixes allowed).")] = "0",
    input_: Annotated[
        Path | None, typer.Option("--input", "-i", help="File to write (default stdin).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write bytes from a file or stdin into a disk at an offset (encrypting them)."""
    start = parse_size(offset)
    source = input_.open("rb") if input_ else sys.stdin.buffer
    written = 0
    try:
        with _open(path, kek_file, writable=True) as disk:
            if input_ is not None and input_.is_file():
                # A file's size is known: refuse before writing anything rather than
                # after the pieces that still fit.
                size = input_.stat().st_size
                if start + size > disk.size:
                    raise UsageError(
                        f"{input_} ({size} bytes) at offset {start} does not fit in {path} "
                        f"({disk.size} bytes); grow the disk or write less"
                    )
            while chunk := source.read(container.PIECE):
                disk.write(start + written, chunk)
                written += len(chunk)
            disk.flush()
    finally:
        if input_:
            source.close()
    _done(as_json, f"wrote {written} bytes at {start}", {"path": str(path), "offset": start,
                                                          "written": written})


@app.command()
def verify(
    path: PathArg,
    kek_file: KekOpt = None,
    sha256: Annotated[
        bool, typer.Option("--sha256", help="Also hash the whole plaintext.")
    ] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Check a disk: header copies and checksums, keySafe unwraps, DEK matches the digest."""
    _need_data(path)
    checks: dict[str, Any] = {"path": str(path)}
    if convert.pending(path) is not None:
        raise ConversionInProgress(
            f"a conversion of {path} is unfinished; run `vmcrypt disk resume {path}` first"
        )
    warnings: list[str] = []
    if container.is_encrypted(path):
        with _collect_warnings(luks2.__name__, warnings):
            header = container.read_header(path)
        checks["header"] = "ok"
        if warnings:
            checks["header"] = (
                f"degraded: {'; '.join(warnings)}; to repair it now, re-key to the same KEK: "
                f"vmcrypt disk rekey {path} --shallow -k KEK --new-kek-file KEK"
            )
        dek = _dek(path, kek_file)
        checks["keysafe"] = "unwraps with the KEK"
        if not header.verify_volume_key(dek):
            raise WrongKeyError(
                f"the DEK unwrapped from the keySafe of {path} does not match the digest in "
                "its header: the header was altered or belongs to another disk; restore it "
                "from a backup"
            )
        checks["dek_digest"] = "matches"
    with _open(path, kek_file, writable=False) as disk:
        checks["size"] = disk.size
        if sha256:
            digest = hashlib.sha256()
            with progress_bar("hashing", enabled=not (quiet or as_json)) as bar:
                for pos in range(0, disk.size, container.PIECE):
                    digest.update(disk.read(pos, min(container.PIECE, disk.size - pos)))
                    if bar:
                        bar(min(disk.size, pos + container.PIECE), disk.size)
            checks["sha256"] = digest.hexdigest()
    if as_json:
        print_json(checks)
    else:
        print_record(f"verify {path}: OK{', with warnings' if warnings else ''}", checks)


@contextlib.contextmanager
def _collect_warnings(logger_name: str, into: list[str]) -> Iterator[None]:
    """Gather the warnings ``logger_name`` logs inside the block (they still reach stderr)."""

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            into.append(record.getMessage())

    handler = Collect(logging.WARNING)
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


@app.command("export-dek")
def export_dek(
    path: PathArg,
    kek_file: KekOpt = None,
    out: Annotated[
        Path, typer.Option("--out", help="File for the DEK (created 0600).")
    ] = Path("dek.bin"),
    as_json: JsonOpt = False,
) -> None:
    """Write the disk's DEK in the clear for recovery with cryptsetup (see docs/recovery.md)."""
    dek = _dek(path, kek_file)
    write_secret_file(out, dek)
    _done(as_json, f"wrote the DEK of {path} to {out} — it is key material in the clear: "
                   "shred it when done", {"path": str(path), "dek_file": str(out)})
