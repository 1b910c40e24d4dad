import pytest

from bbench.registry import Registry, UnknownNameError


def test_lookup_is_case_insensitive_and_takes_aliases():
    reg: Registry[int] = Registry("thing")
    reg.add("MMPareto", 1, aliases=("pareto",))
    assert reg.get("mmpareto") == 1
    assert reg.get("PARETO") == 1
    assert reg.canonical("pareto") == "MMPareto"


def test_unknown_name_suggests_close_matches_and_lists_all():
    reg: Registry[int] = Registry("method")
    for i, name in enumerate(["OGM", "OPM", "Baseline"]):
        reg.add(name, i)
    with pytest.raises(UnknownNameError) as err:
        reg.get("OGN")
    message = str(err.value)
    assert "unknown method 'OGN'" in message
    assert "Did you mean" in message and "'OGM'" in message
    assert "Available: OGM, OPM, Baseline" in message


def test_duplicate_registration_is_refused():
    reg: Registry[int] = Registry("thing")
    reg.add("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.add("A", 2)


def test_remove_unregisters_the_name_and_its_aliases_only():
    reg: Registry[int] = Registry("thing")
    reg.add("MMPareto", 1, aliases=("pareto",))
    reg.add("OGM", 2, aliases=("ogm_ge",))
    assert reg.remove("PARETO") == 1
    assert "MMPareto" not in reg and "pareto" not in reg
    assert reg.names() == ["OGM"] and reg.aliases() == ["ogm_ge"]
    reg.add("MMPareto", 3, aliases=("pareto",))  # the names are free again
    assert reg.get("pareto") == 3
    with pytest.raises(UnknownNameError):
        reg.remove("nope")
