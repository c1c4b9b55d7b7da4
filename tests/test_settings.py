"""asap_core.settings: each setting declared once (type, default, description), read one way, a bad value named."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from asap_core.errors import InputError
from asap_core.hosting import HostedPolicy
from asap_core.settings import (
    ENVIRONMENT,
    MB,
    Settings,
    env_names,
    main,
    markdown_table,
    parse_bool,
    reload_settings,
    settings,
)


def test_every_setting_has_a_description_and_one_row():
    for field, info in Settings.model_fields.items():
        assert info.description and "|" not in info.description and "\n" not in info.description, field
    names = [env_names(field)[0] for field in Settings.model_fields]
    assert list(ENVIRONMENT) == names and len(set(names)) == len(names)
    assert markdown_table().count("\n| `") == len(names)
    assert ENVIRONMENT["ASAP_MAX_UPLOAD_MB"][0] == "10" and ENVIRONMENT["ASAP_MALLOC_KEEP"][0] == "1"


def test_markdown_flag_prints_the_table(capsys):
    assert main(["--markdown"]) == 0
    assert capsys.readouterr().out == markdown_table()


def _another_value(default: object) -> str:
    """A valid value, written as a user would, that differs from ``default``."""
    if isinstance(default, bool):
        return "0" if default else "1"
    if isinstance(default, (int, float)):
        return str(int(default) + 3)
    return "a, b" if default == () else "/srv/elsewhere"


@pytest.mark.parametrize("field", list(Settings.model_fields))
def test_each_variable_the_table_lists_sets_its_field(field):
    default = getattr(Settings(), field)
    for name in env_names(field):
        assert getattr(Settings.from_env({name: _another_value(default)}), field) != default, name


def test_defaults_are_the_declared_ones():
    s = Settings.from_env({})
    assert s == Settings() == Settings.from_env({"ASAP_HOSTED": "", "ASAP_MAX_UPLOAD_MB": "  "})
    assert s.max_upload_bytes == 10 * MB and s.upload_bytes_per_day == 40 * MB
    assert s.cache_dir == Path.home() / ".cache" / "asap_explorer"  # expanded
    assert s.state_db_url == f"sqlite:///{(s.cache_dir / 'state.sqlite3').as_posix()}"


def test_values_are_parsed_one_way():
    assert all(parse_bool("X", v) for v in ("1", "true", "Yes", " on "))
    assert not any(parse_bool("X", v) for v in ("0", "false", "NO", "off"))
    assert parse_bool("X", "", default=True) and not parse_bool("X", None)
    for word, value in (("YES", True), (" On ", True), ("true", True), ("Off", False), ("no", False)):
        assert Settings.from_env({"ASAP_HOSTED": word}).hosted is value
        assert Settings.from_env({"ASAP_MALLOC_KEEP": word}).malloc_keep is value
    s = Settings.from_env({"ASAP_MODEL_ALLOWLIST": " a , b,,", "ASAP_MAX_UPLOAD_MB": "2.5", "TRANSFORMERS_OFFLINE": "1",
                           "ASAP_MALLOC_KEEP": "", "ASAP_CACHE_DIR": "~/c", "ASAP_BUNDLE_ROOT": "~/r/../b"})
    assert s.model_allowlist == ("a", "b") and s.max_upload_bytes == int(2.5 * MB)
    assert s.hf_offline and s.malloc_keep
    assert s.cache_dir == Path.home() / "c" and s.bundle_root == (Path.home() / "b").resolve()
    # the Hub's own rule: the first of HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE that is set decides
    assert not Settings.from_env({"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "1"}).hf_offline


@pytest.mark.parametrize("raw, expected", [("", False), ("0", None), ("none", None), ("5000", 5000), ("1e6", 10**6)])
def test_max_image_pixels_has_three_states(raw, expected):
    assert Settings.from_env({"ASAP_MAX_IMAGE_PIXELS": raw}).max_image_pixels == expected


def test_max_image_pixels_sets_pillows_limit(set_env):
    set_env(ASAP_MAX_IMAGE_PIXELS=None)
    pillows = Image.MAX_IMAGE_PIXELS
    set_env(ASAP_MAX_IMAGE_PIXELS="1234")
    assert Image.MAX_IMAGE_PIXELS == 1234
    set_env(ASAP_MAX_IMAGE_PIXELS="0")
    assert Image.MAX_IMAGE_PIXELS is None
    set_env(ASAP_MAX_IMAGE_PIXELS=None)
    assert pillows == Image.MAX_IMAGE_PIXELS and pillows


@pytest.mark.parametrize("name, raw, problem", [
    ("ASAP_HOSTED", "maybe", "yes/no"), ("ASAP_COMPILE", "y", "yes/no"), ("TRANSFORMERS_OFFLINE", "sure", "yes/no"),
    ("ASAP_MAX_UPLOAD_MB", "ten", "not a number"), ("ASAP_MAX_UPLOAD_MB", "nan", "not a number"),
    ("ASAP_MAX_UPLOAD_MB", "-1", "below 0"), ("ASAP_HEAVY_SLOTS", "0", "below 1"),
    ("ASAP_RELEVANCE_BUDGET", "2.5", "whole number"), ("ASAP_MAX_IMAGE_PIXELS", "-3", "below 1"),
    ("ASAP_MAX_IMAGE_PIXELS", "lots", "whole number"), ("ASAP_MAX_UPLOAD_PIXELS", "0", "below 1"),
])
def test_a_malformed_value_names_the_variable_and_a_fix(name, raw, problem):
    with pytest.raises(InputError) as err:
        Settings.from_env({name: raw})
    assert err.value.message.startswith(f"{name}={raw!r}") and problem in err.value.message
    assert err.value.hint.startswith(f"set {name} ") and "unset it" in err.value.hint


def test_settings_are_read_once_until_reloaded(set_env):
    set_env(ASAP_RELEVANCE_BUDGET="7")
    first = settings()
    os.environ["ASAP_RELEVANCE_BUDGET"] = "9"  # changed behind its back (monkeypatch restores it): not seen yet
    assert settings() is first and settings().relevance_budget == 7
    assert set_env(ASAP_RELEVANCE_BUDGET="9").relevance_budget == 9 and reload_settings() == settings()


def test_the_hosted_policy_takes_every_limit_from_the_settings(set_env, tmp_path):
    s = set_env(ASAP_BUNDLE_ROOT=str(tmp_path), ASAP_MODEL_ALLOWLIST="m1,m2", ASAP_MAX_UPLOAD_MB="3",
                ASAP_RELEVANCE_BUDGET="5", ASAP_UPLOAD_MB_PER_DAY="7")
    left_out = HostedPolicy(tmp_path)
    for policy in (HostedPolicy.from_settings(), left_out):
        assert (policy.model_allowlist, policy.max_upload_bytes, policy.relevance_budget,
                policy.upload_bytes_per_day) == (("m1", "m2"), 3 * MB, 5, 7 * MB)
    assert HostedPolicy.from_settings().state_url == s.state_db_url
    with pytest.raises(InputError, match="upload a smaller image"):
        left_out.check_upload_header("big.png", b"\0" * (3 * MB + 1))
