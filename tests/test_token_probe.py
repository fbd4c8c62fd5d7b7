"""The object-token probe (`phenaki-eval probe`): it must tell a model that draws objects from one
that only draws the background."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from phenaki.evaluation.token_probe import (
    STRUCTURED,
    background_codes,
    maskings,
    probe_tokens,
)

CODES, MASK = 50, 50


def _clips(batch: int = 6) -> torch.Tensor:
    """Ids [B, 4, 8, 8]: background 7 (token-frame 0: 3), one 2x2 object of codes 20..29 per clip."""
    g = torch.Generator().manual_seed(0)
    ids = torch.full((batch, 4, 8, 8), 7)
    ids[:, 0] = 3
    for b in range(batch):
        y, x = (int(v) for v in torch.randint(0, 7, (2,), generator=g))
        ids[b, :, y:y + 2, x:x + 2] = torch.randint(20, 30, (4, 2, 2), generator=g)
    return ids


def _peaked(ids: torch.Tensor) -> torch.Tensor:
    return F.one_hot(ids, CODES).float() * 10.0


def test_background_is_the_commonest_code_of_each_token_frame():
    assert background_codes(_clips()).tolist() == [3, 7, 7, 7]


def test_an_oracle_gets_every_token_and_a_background_painter_no_object():
    ids = _clips()
    oracle = probe_tokens(ids, lambda masked: _peaked(ids), MASK)
    painter = probe_tokens(ids, lambda masked: _peaked(background_codes(ids)[None, :, None, None].expand_as(ids)), MASK)
    assert [r.masking for r in oracle][-3:] == list(STRUCTURED)
    for o, p in zip(oracle, painter):
        assert o.object_tokens == p.object_tokens > 0
        assert o.object_accuracy == 1.0 and o.background_accuracy == 1.0
        assert o.predicted_object_share == pytest.approx(o.true_object_share)
        assert p.object_accuracy == 0.0 and p.background_accuracy == 1.0 and p.predicted_object_share == 0.0
        assert p.object_nll > 9.0 > 0.01 > o.object_nll


def test_the_model_sees_only_what_each_masking_leaves():
    """Given tokens reach the model unchanged and masked ones as the mask id: a model that copies a
    given token and guesses the background elsewhere gets objects right exactly where they were given."""
    ids = _clips()
    seen = []

    def copier(masked: torch.Tensor) -> torch.Tensor:
        seen.append(masked.clone())
        guess = torch.where(masked == MASK, background_codes(ids)[None, :, None, None].expand_as(ids), masked)
        return _peaked(guess)

    rows = probe_tokens(ids, copier, MASK)
    masks = maskings(tuple(ids.shape), torch.Generator().manual_seed(0))
    for inp, (name, mask) in zip(seen, masks.items()):
        assert torch.equal(inp == MASK, mask), name
        assert torch.equal(inp[~mask], ids[~mask])
    assert all(r.object_accuracy == 0.0 for r in rows)  # only masked tokens are scored
    assert masks["first token-frame given, rest masked"][:, 0].logical_not().all()
    assert masks["first token-frame given, rest masked"][:, 1:].all()
    assert masks["random 100% masked"].all()


def test_a_single_token_frame_is_refused():
    with pytest.raises(ValueError, match="T >= 2"):
        maskings((2, 1, 8, 8), torch.Generator())


def test_eval_probe_on_a_tiny_pipeline(tmp_path, tiny_pipeline_dir, one_thread):
    from click.testing import CliRunner

    from phenaki.cli import eval_main

    runner = CliRunner()

    out = tmp_path / "probe.json"
    args = ["probe", "--checkpoint", str(tiny_pipeline_dir), "--domain", "2", "--clips", "3", "--device", "cpu"]
    result = runner.invoke(eval_main, [*args, "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "first token-frame given, rest masked" in result.output
    data = json.loads(out.read_text())
    assert data["domain"] == 2 and len(data["rows"]) == 6
    assert all(0.0 <= row["background_accuracy"] <= 1.0 for row in data["rows"])
    result = runner.invoke(eval_main, [*args, "--split", "heldout"])
    assert result.exit_code != 0 and "--config" in result.output
