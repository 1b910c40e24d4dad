"""A study's declaration (file + flags), its derived seeds and its trial generators."""
from __future__ import annotations

import pytest

from bbench.config.fields import LogUniform, SpecError
from bbench.study.declare import declare_study, parse_sweep, replicate_seed, trial_generator
from bbench.study.tune import Trial, best_trial, trial_configurations


def test_replicate_seeds_are_shared_across_methods_and_differ_across_replicates_datasets_studies():
    seeds = {(s, d, r): replicate_seed(s, d, r) for s in (0, 1) for d in ("mfeat", "mfeat-pix-zer")
             for r in range(4)}
    assert len(set(seeds.values())) == len(seeds)
    assert replicate_seed(0, "mfeat", 2) == replicate_seed(0, "mfeat", 2)  # no state, no order
    assert all(0 <= s < 2**31 for s in seeds.values())


def test_a_larger_trial_budget_keeps_the_earlier_trials():
    spaces = {"alpha": LogUniform(0.05, 2.0)}
    four = trial_configurations(0, "mfeat", "X", spaces, 4)
    assert trial_configurations(0, "mfeat", "X", spaces, 8)[:4] == four
    assert trial_configurations(0, "mfeat", "Y", spaces, 4) != four
    assert trial_configurations(1, "mfeat", "X", spaces, 4) != four
    assert trial_generator(0, "mfeat", "X").random() == trial_generator(0, "mfeat", "X").random()


def test_selection_takes_the_best_validation_score_and_the_earlier_trial_on_a_tie():
    trials = [Trial(0, "a", {}, 0.5, "finished"), Trial(1, "b", {}, 0.7, "finished"),
              Trial(2, "c", {}, None, "failed"), Trial(3, "d", {}, 0.7, "finished")]
    assert best_trial(trials).trial == 1
    assert best_trial(trials[2:3]) is None


def test_an_accuracy_tie_goes_to_the_lower_validation_loss_then_the_earlier_trial():
    # mfeat's 140 validation samples saturate: trials tie on accuracy, as epochs do in model
    # selection, and the same rule (lower validation loss) separates them.
    trials = [Trial(0, "a", {}, 0.99, "finished", 0.30), Trial(1, "b", {}, 0.99, "finished", 0.10),
              Trial(2, "c", {}, 0.99, "finished", 0.10), Trial(3, "d", {}, 0.99, "finished", None)]
    assert best_trial(trials).trial == 1
    assert best_trial([trials[3], trials[0]]).trial == 0  # a loss beats none


def test_flags_override_the_file_and_settings_merge(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('methods = ["ogm", "baseline"]\ndatasets = ["mfeat"]\nseeds = 5\nepochs = 4\n'
                    '[set]\n"dataset.options.subsample_per_class" = 20\nOGM.start = 0\n')
    study = declare_study(path, settings={"lr": "0.05"}, seeds="2", datasets=None)
    assert study.methods == ("OGM", "Baseline") and study.datasets == ("mfeat",)
    assert study.seeds == 2
    assert study.settings == {"dataset.options.subsample_per_class": 20, "OGM.start": 0,
                              "epochs": 4, "lr": "0.05"}
    assert declare_study(path, epochs="7").settings["epochs"] == "7"


def test_a_sweep_is_parsed_from_its_flag_or_its_table(tmp_path):
    assert parse_sweep("alpha=0, 0.1,1") == {"param": "alpha", "values": ["0", "0.1", "1"]}
    path = tmp_path / "s.toml"
    path.write_text('methods = ["OGM"]\nsweep = {param = "alpha", values = [0, 0.5]}\n')
    assert declare_study(path).sweep.values == (0, 0.5)
    assert declare_study(path, sweep="alpha=1,2").sweep.values == ("1", "2")


@pytest.mark.parametrize("flags, message", [
    ({"sweep": "alpha"}, "at least two values"),
    ({"sweep": "alpha=0,1", "trials": "2"}, "exclude each other"),
    ({"seeds": "0"}, "seeds=0 is out of range"),
    ({"methods": "OGX"}, "Did you mean 'OGM'"),
    ({"datasets": "mfeet"}, "Did you mean 'mfeat'"),
])
def test_bad_declarations_get_one_clear_message(flags, message):
    with pytest.raises((SpecError, KeyError), match=message):
        declare_study(**flags)


def test_an_unknown_file_key_is_named_with_suggestions(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("seedz = 3\n")
    with pytest.raises(SpecError, match="unknown key 'seedz'. Did you mean 'seeds'"):
        declare_study(path)
