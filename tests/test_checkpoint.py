import json
import os
from dataclasses import dataclass

import pytest
import torch

from phenaki.checkpoint import CheckpointError, IntegrityError, PretrainedMixin
from phenaki.utils.fileio import atomic_write_dir, recover_dir


@dataclass
class TinyConfig:
    dim: int = 4
    depth: int = 1


class Tiny(torch.nn.Module, PretrainedMixin):
    config_class = TinyConfig

    def __init__(self, config: TinyConfig):
        super().__init__()
        self.config = config
        self.layers = torch.nn.ModuleList(torch.nn.Linear(config.dim, config.dim) for _ in range(config.depth))


def test_save_and_load_round_trip(tmp_path):
    model = Tiny(TinyConfig(dim=6, depth=2))
    model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["checksums.json", "config.json", "model.safetensors"]
    loaded = Tiny.from_pretrained(tmp_path / "ckpt")
    assert loaded.config == model.config
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)


def test_half_precision_save_loads_into_float_model(tmp_path):
    model = Tiny(TinyConfig())
    model.save_pretrained(tmp_path / "ckpt", dtype=torch.bfloat16)
    loaded = Tiny.from_pretrained(tmp_path / "ckpt")
    assert loaded.layers[0].weight.dtype == torch.float32
    torch.testing.assert_close(loaded.layers[0].weight, model.layers[0].weight, atol=1e-2, rtol=1e-2)


def test_shape_mismatch_names_the_tensor(tmp_path):
    Tiny(TinyConfig(dim=4)).save_pretrained(tmp_path / "ckpt")
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    cfg["config"]["dim"] = 8
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(IntegrityError, match=r"config\.json: truncated"):  # the folder's checksums see the edit
        Tiny.from_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "checksums.json").unlink()  # as a folder saved before checksums were recorded
    with pytest.raises(CheckpointError, match=r"layers\.0\.weight: checkpoint \(4, 4\) vs model \(8, 8\)"):
        Tiny.from_pretrained(tmp_path / "ckpt")


def test_missing_keys_and_bad_config_are_named(tmp_path):
    Tiny(TinyConfig(depth=1)).save_pretrained(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match=r"missing keys: layers\.1\.bias"):
        Tiny.from_pretrained(tmp_path / "ckpt", depth=2)
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    cfg["config"]["width"] = 3
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "ckpt" / "checksums.json").unlink()  # as a folder saved before checksums were recorded
    with pytest.raises(CheckpointError, match="unknown config key 'width'"):
        Tiny.from_pretrained(tmp_path / "ckpt")


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="config.json: missing"):
        Tiny.from_pretrained(tmp_path)


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path):
    model = Tiny(TinyConfig())
    model.save_pretrained(tmp_path / "ckpt")
    before = (tmp_path / "ckpt" / "model.safetensors").read_bytes()

    def dies_halfway(tmp):
        (tmp / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        atomic_write_dir(tmp_path / "ckpt", dies_halfway)
    assert (tmp_path / "ckpt" / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temp left behind
    Tiny.from_pretrained(tmp_path / "ckpt")


def test_recover_after_death_between_renames(tmp_path):
    Tiny(TinyConfig()).save_pretrained(tmp_path / "ckpt")
    # the state a kill between "old aside" and "new in place" leaves
    os.replace(tmp_path / "ckpt", tmp_path / ".ckpt.old-deadbeef")
    recover_dir(tmp_path / "ckpt")
    Tiny.from_pretrained(tmp_path / "ckpt")


def test_nothing_is_pickled(tmp_path):
    Tiny(TinyConfig()).save_pretrained(tmp_path / "ckpt")
    for file in (tmp_path / "ckpt").iterdir():
        assert not file.read_bytes().startswith(b"\x80")  # pickle protocol header
