"""Loaders for published test vectors, read as data at test time (never copied into the repo).

* NIST CAVP vectors come from the ``cryptography-vectors`` package (a dev dependency);
  :func:`vectors_path` finds a file inside it and :func:`load_nist_rsp` parses the
  CAVP ``.rsp`` format.
* IEEE 1619 Annex B vectors come from Crypto++'s test vector files, shipped by the Debian
  package ``libcrypto++-utils``; :func:`load_cryptopp` parses that format.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = [
    "CRYPTOPP_VECTORS",
    "load_cryptopp",
    "load_nist_rsp",
    "unhex",
    "vectors_path",
]

#: Where ``apt-get install libcrypto++-utils`` puts Crypto++'s test vectors.
CRYPTOPP_VECTORS = Path("/usr/share/crypto++/TestVectors")


def vectors_path(*parts: str) -> Path:
    """Path of a file inside the installed ``cryptography_vectors`` package.

    Located through importlib rather than a hard-coded site-packages path, so it works in
    any virtualenv or install layout.
    """
    spec = importlib.util.find_spec("cryptography_vectors")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the cryptography-vectors package is not installed; install the dev extras"
        )
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(f"no such vector file in cryptography-vectors: {path}")
    return path


def load_nist_rsp(path: Path) -> list[dict[str, str]]:
    """Parse a NIST CAVP ``.rsp`` file into one dict per ``COUNT`` record.

    Keys are lower-cased field names (``count``, ``key``, ``pt``, ...); each record also
    gets ``section``, the bracketed header it sits under, lower-cased (``encrypt``,
    ``decrypt``). Comment lines start with ``#``; the files use CRLF line ends. A bare
    ``FAIL`` line (key-wrap files) sets ``fail`` on the record it ends.
    """
    records: list[dict[str, str]] = []
    section = ""
    current: dict[str, str] | None = None
    for raw in path.read_text(encoding="ascii").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip().lower()
            current = None
            continue
        name, sep, value = line.partition("=")
        if not sep and line == "FAIL" and current is not None:
            current["fail"] = "true"  # KW/KWP files: this record must fail to unwrap
            continue
        if not sep:
            raise ValueError(f"{path.name}: unexpected line {line!r}")
        name = name.strip().lower()
        if name == "count":
            current = {"section": section}
            records.append(current)
        if current is None:
            raise ValueError(f"{path.name}: field {name!r} outside a COUNT record")
        current[name] = value.strip()
    return records


def load_cryptopp(path: Path) -> list[dict[str, str]]:
    """Parse a Crypto++ test vector file into one dict per ``Test:`` line.

    The format is ``Name: value`` lines; a value continues on the next line when a line
    ends with ``\\``; ``#`` starts a comment line. As in Crypto++'s own reader, fields
    persist from one test to the next until redefined, and a ``Test:`` line closes a test
    (its value, e.g. ``Encrypt``, is stored under ``Test``). Values are returned as written
    (hex strings may contain spaces); see :func:`unhex`.
    """
    records: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    name: str | None = None
    for raw in path.read_text(encoding="ascii").splitlines():
        line = raw.rstrip()
        if name is None:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            field, sep, value = line.partition(":")
            if not sep:
                raise ValueError(f"{path.name}: unexpected line {line!r}")
            name = field.strip()
            fields[name] = ""
        else:  # continuation of the previous field's value
            value = line
        more = value.endswith("\\")
        fields[name] += value.removesuffix("\\").strip() + (" " if more else "")
        if more:
            continue
        fields[name] = fields[name].strip()
        if name == "Test":
            records.append(dict(fields))
        name = None
    return records


def unhex(value: str) -> bytes:
    """Decode a hex field, ignoring the spaces that continuation lines leave in it."""
    return bytes.fromhex("".join(value.split()))
