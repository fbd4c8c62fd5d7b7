"""SamplingSettings: one definition that the API, both commands and story lines all read."""

from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner

from phenaki.cli import eval_main, sample_main
from phenaki.config import Config
from phenaki.sampling.settings import (
    SamplingSettings,
    SettingsError,
    scene_setting_names,
)
from phenaki.story import parse_scene_line

NAMES = [f.name for f in dataclasses.fields(SamplingSettings)]


def test_settings_are_frozen_and_checked_when_built():
    s = SamplingSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.steps = 3  # type: ignore[misc]
    for bad, message in [({"steps": 0}, "steps must be >= 1"), ({"polish": 1.0}, r"polish must be in \[0, 1\)"),
                         ({"top_p": 0.0}, "top_p must be"), ({"schedule": "sideways"}, "known schedule"),
                         ({"guidance": float("nan")}, "guidance must be"), ({"steps": 2.5}, "expected an integer"),
                         ({"critic_revise": True}, "critic_revise needs use_critic")]:
        with pytest.raises(SettingsError, match=message):
            SamplingSettings(**bad)
    assert SamplingSettings(guidance=2).guidance == 2.0 and isinstance(SamplingSettings(guidance=2).guidance, float)


def test_replace_overrides_by_keyword_and_names_a_misspelt_one():
    s = SamplingSettings(steps=36, candidates=4)
    t = s.replace(steps=12, candidates=None)  # None leaves a setting as it is
    assert (t.steps, t.candidates, s.steps) == (12, 4, 36)
    assert s.replace() is s
    with pytest.raises(SettingsError, match="unknown sampling setting 'candidate' \\(did you mean 'candidates'\\?\\)"):
        s.replace(candidate=2)


def test_parse_reads_text_as_each_setting_s_type():
    assert SamplingSettings.parse("steps", "8") == 8
    assert SamplingSettings.parse("guidance", "4") == 4.0
    assert SamplingSettings.parse("use_critic", "true") is True
    assert SamplingSettings.parse("top_k", "none") is None
    assert SamplingSettings.parse("schedule", "linear") == "linear"
    with pytest.raises(SettingsError, match="candidates must be >= 1"):
        SamplingSettings.parse("candidates", "0")


def test_the_training_config_section_is_the_same_settings():
    assert isinstance(Config().sampling, SamplingSettings)


@pytest.mark.parametrize("command", [sample_main, eval_main])
def test_every_setting_is_an_option_of_both_commands(command):
    args = ["--help"] if command is sample_main else ["shapes", "--help"]
    text = CliRunner().invoke(command, args, terminal_width=200).output
    for name in NAMES:
        assert f"--{name.replace('_', '-')}" in text, name


def test_every_scene_setting_can_be_set_in_a_story_line():
    values = {"steps": "8", "guidance": "2", "guidance_ramp": "true", "temperature": "0.5",
              "choice_temperature": "0.1", "temporal_bias": "1", "use_critic": "true", "critic_revise": "false",
              "schedule": "linear", "top_k": "4", "top_p": "0.9", "candidates": "2", "polish": "0.1",
              "polish_passes": "2", "relevance_floor": "0.5", "match_weight": "10",
              "negative_prompt": '"the blue ball"'}
    assert sorted(values) == sorted(scene_setting_names())
    scene = parse_scene_line("a red ball rises [" + " ".join(f"{k}={v}" for k, v in values.items()) + "]")
    assert SamplingSettings().replace(**scene.settings).candidates == 2
    assert set(NAMES) - set(scene_setting_names()) == {"first_frames", "scene_frames", "context_frames", "fps"}
