from pathlib import Path

import pytest

from phenaki.config import (
    Config,
    ConfigError,
    TokenizerConfig,
    from_dict,
    load_config,
    to_dict,
)
from phenaki.training.base import parse_overrides

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["shapes_demo.yaml", "phenaki_paper.yaml"])
def test_shipped_configs_load(name):
    config = load_config(ROOT / "configs" / name)
    assert isinstance(config, Config)
    assert config.tokenizer.temporal_patch_size == 2


def test_paper_config_has_the_paper_scale():
    c = load_config(ROOT / "configs" / "phenaki_paper.yaml")
    assert c.tokenizer.image_size == (128, 128)
    assert (c.data.num_frames, c.data.fps) == (11, 8.0)
    assert (c.tokenizer.patch_size, c.tokenizer.temporal_patch_size) == (8, 2)
    assert c.tokenizer.codebook_size == 8192
    assert (c.tokenizer.spatial_depth, c.tokenizer.temporal_depth, c.tokenizer.dim) == (4, 4, 512)
    assert (c.transformer.depth, c.transformer.dim) == (24, 2048)
    assert "t5" in c.text.name_or_path


def test_unknown_key_names_it_with_a_hint(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("tokenizer:\n  patch_sise: 8\n")
    with pytest.raises(ConfigError, match=r"tokenizer\.patch_sise.*did you mean 'patch_size'"):
        load_config(path)


def test_unknown_section_is_an_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("trainer:\n  steps: 3\n")
    with pytest.raises(ConfigError, match="'trainer'"):
        load_config(path)


def test_wrong_types_are_errors():
    with pytest.raises(ConfigError, match="tokenizer.dim: expected an integer"):
        from_dict(Config, {"tokenizer": {"dim": "big"}})
    with pytest.raises(ConfigError, match="quantizer"):
        from_dict(Config, {"tokenizer": {"quantizer": "pq"}})
    with pytest.raises(ConfigError, match="true/false"):
        from_dict(Config, {"tokenizer": {"use_cosine_sim": "yes"}})
    with pytest.raises(ConfigError, match="train_tokenizer.lr: expected a number, got 'fast'"):
        from_dict(Config, {"train_tokenizer": {"lr": "fast"}})


def test_exponent_without_a_dot_is_a_number():
    """YAML 1.1 (PyYAML) reads `lr: 5e-4` as the string '5e-4': it still means 0.0005."""
    assert from_dict(Config, {"train_tokenizer": {"lr": "5e-4"}}).train_tokenizer.lr == 5e-4
    config = load_config(ROOT / "configs" / "shapes_demo.yaml", parse_overrides(("train_maskgit.lr=2e-4",)))
    assert config.train_maskgit.lr == 2e-4


def test_invariants_checked():
    with pytest.raises(ConfigError, match="num_frames 10 must be 1 \\+ 2 \\* k"):
        TokenizerConfig(num_frames=10)
    with pytest.raises(ConfigError, match="not divisible"):
        TokenizerConfig(image_size=(60, 64), patch_size=8)
    assert TokenizerConfig(quantizer="fsq", fsq_levels=[8, 5, 5, 5]).codebook_size == 1000


def test_round_trip_and_overrides(tmp_path):
    config = load_config(ROOT / "configs" / "shapes_demo.yaml", {"train_tokenizer.steps": 7})
    assert config.train_tokenizer.steps == 7
    again = from_dict(Config, to_dict(config))
    assert again == config


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_same_token_ids_ignores_decoder_only_settings():
    from phenaki.config import TokenizerConfig, same_token_ids, to_dict

    base = TokenizerConfig(quantizer="fsq", spatial_window=1)
    redrawn = TokenizerConfig(quantizer="fsq", spatial_window=1, decoder_spatial_window=0, refine_channels=32,
                              refine_features=8)
    assert same_token_ids(base, redrawn)
    assert not same_token_ids(base, TokenizerConfig(quantizer="fsq", spatial_window=2))
    assert not same_token_ids(base, TokenizerConfig(quantizer="fsq", spatial_window=1, fsq_levels=[8, 8, 8]))
    stored = to_dict(base)
    del stored["refine_channels"], stored["decoder_spatial_window"]  # written before those options existed
    assert same_token_ids(stored, redrawn)
    assert not same_token_ids({**stored, "no_such_option": 1}, base)  # unreadable: not the same
