"""`python -m bbench.testing`: the printed run command trains on the miniature it wrote."""
from __future__ import annotations

import json
import shlex

from bbench import cli
from bbench.testing.__main__ import flatten, main


def test_flatten_gives_dotted_leaves():
    nested = {"dataset.options": {"image_size": 32, "empty": {}}, "model.encoders": {"a": {"type": "mlp"}},
              "epochs": 1}
    assert flatten(nested) == [("dataset.options.image_size", 32), ("model.encoders.a.type", "mlp"),
                               ("epochs", 1)]


def test_printed_command_trains_on_the_miniature(tmp_path, capsys):
    assert main(["miniature", "CMUMOSEI", str(tmp_path / "mini")]) == 0
    command = capsys.readouterr().out.strip().splitlines()[-1]
    words = shlex.split(command)
    assert words[:4] == ["python", "-m", "bbench", "run"]
    assert f"dataset.root={tmp_path / 'mini'}" in words
    out = tmp_path / "run"
    assert cli.main(words[3:] + ["--out", str(out), "--quiet"]) == 0
    record = json.loads((out / "record.json").read_text())
    assert record["spec"]["dataset"]["name"] == "cmu_mosei"
    assert record["spec"]["train"]["epochs"] == 1 and set(record["metrics"]["shapley"]) == {"audio", "visual", "text"}


def test_refuses_a_non_empty_folder_and_unknown_raw_generators(tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    assert main(["miniature", "CREMAD", str(tmp_path / "full")]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert (tmp_path / "full" / "x").read_text() == "keep me"
    assert main(["raw", "UCF101", str(tmp_path / "raw")]) == 2
    assert "no raw-media generator for 'ucf101'; available: cremad" in capsys.readouterr().err
    assert main(["miniature", "CREMA", str(tmp_path / "m")]) == 2
    assert "Did you mean 'cremad'" in capsys.readouterr().err
