"""The controls text-to-video users expect: negative prompts, step callbacks that can stop a run,
generators for seeds, and prompts the model cannot read."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

from phenaki.cli import sample_main
from phenaki.pipeline import GenerationStopped, Phenaki, StepInfo, UnreadablePromptError
from phenaki.sampling.decode import condition
from phenaki.sampling.settings import SamplingSettings

STORY = ["a red ball moves right", "the blue box rises"]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir):
    return Phenaki.from_pretrained(tiny_pipeline_dir, device="cpu", dtype="float32")


def test_a_negative_prompt_takes_the_unconditional_rows(pipe):
    model = pipe.transformer
    text = pipe.text_encoder.encode(["a red ball moves right", "the blue box rises"])
    negative = pipe.text_encoder.encode(["a green disc falls"] * 2)
    plain = condition(model, text, SamplingSettings(guidance=3.0))
    pushed = condition(model, text, SamplingSettings(guidance=3.0), negative=negative)
    assert plain.guided and pushed.guided and pushed.context.batch == 4
    expected = model.prepare_context(*negative)
    length = expected.tokens.shape[1]
    torch.testing.assert_close(pushed.context.tokens[2:, :length], expected.tokens)  # the negative text ...
    assert not pushed.context.mask[2:, length:].any()                               # ... padded, masked
    torch.testing.assert_close(pushed.context.tokens[:2, :text[0].shape[1]], plain.context.tokens[:2])
    assert not torch.allclose(plain.context.tokens[2:, :1], pushed.context.tokens[2:, :1])  # not the null text


def test_negative_prompts_change_guided_videos_only_and_are_recorded(pipe):
    plain = pipe.generate(STORY, seed=4)
    pushed = pipe.generate(STORY, seed=4, negative_prompt="a green disc falls")
    assert not torch.equal(plain.frames, pushed.frames)
    assert pushed.metadata["settings"]["negative_prompt"] == "a green disc falls"
    # without guidance there is no unconditional row for it to replace
    assert torch.equal(pipe.generate(STORY, seed=4, guidance=1.0).frames,
                       pipe.generate(STORY, seed=4, guidance=1.0, negative_prompt="a green disc falls").frames)
    # per scene, as a story line says it
    scene = pipe.generate([STORY[0], STORY[1] + ' [negative="a red ball moves right"]'], seed=4)
    assert scene.metadata["scene_settings"] == [{}, {"negative_prompt": "a red ball moves right"}]
    assert torch.equal(scene.frames[:11], plain.frames[:11]) and not torch.equal(scene.frames, plain.frames)


def test_step_callback_sees_every_step_and_can_stop(pipe):
    seen: list[StepInfo] = []
    video = pipe.generate(STORY, seed=1, callback=seen.append)
    assert len(seen) == 2 * 2  # two scenes of one window, 2 steps each
    assert [(s.scene, s.window, s.step) for s in seen] == [(1, 1, 1), (1, 1, 2), (2, 1, 1), (2, 1, 2)]
    assert seen[0].tokens.shape[0] == 1 and (seen[0].tokens == pipe.transformer.mask_id).any()
    assert not (seen[1].tokens == pipe.transformer.mask_id).any()  # the last step reveals everything
    assert torch.equal(video.frames, pipe.generate(STORY, seed=1).frames)  # watching changes nothing
    with pytest.raises(GenerationStopped, match="scene 2, step 1"):
        pipe.generate(STORY, seed=1, callback=lambda s: s.scene == 2)


def test_a_generator_stands_in_for_the_seed(pipe):
    by_seed = pipe.generate(STORY, seed=7)
    by_generator = pipe.generate(STORY, generator=torch.Generator().manual_seed(7))
    assert torch.equal(by_seed.frames, by_generator.frames)
    assert by_generator.metadata["settings"]["generator_seed"] == 7


def test_prompts_the_model_cannot_read(pipe, tiny_pipeline_dir, tmp_path):
    with pytest.raises(UnreadablePromptError, match="knows none of the words of 'purple elephants dance'"):
        pipe.generate(["purple elephants dance"])
    assert issubclass(UnreadablePromptError, ValueError)
    assert pipe.unknown_words(["a purple ball rises", "a red ball moves right"]) == {"a purple ball rises": ["purple"]}
    runner = CliRunner()
    out = tmp_path / "x.gif"
    base = ["--checkpoint", str(tiny_pipeline_dir), "--out", str(out), "--first-frames", "3"]
    result = runner.invoke(sample_main, [*base, "--prompt", "purple elephants dance"])
    assert result.exit_code == 2 and "knows none of the words" in result.output and not out.exists()
    result = runner.invoke(sample_main, [*base, "--prompt", "a purple ball rises"])
    assert result.exit_code == 0
    assert "not in the model's vocabulary, left out of 'a purple ball rises': purple" in result.output
    result = runner.invoke(sample_main, [*base, "--prompt", "a red ball rises", "--negative-prompt", "zebras"])
    assert result.exit_code == 2 and "'zebras'" in result.output


def test_ctrl_c_leaves_nothing_half_written(tiny_pipeline_dir, tmp_path, monkeypatch):
    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Phenaki, "generate", interrupted)
    out = tmp_path / "x.mp4"
    result = CliRunner().invoke(sample_main, ["--checkpoint", str(tiny_pipeline_dir), "--prompt", STORY[0],
                                              "--out", str(out)])
    assert result.exit_code == 130 and "interrupted: no video written" in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_real_sigint_mid_story_leaves_nothing(tiny_pipeline_dir, tmp_path):
    story = tmp_path / "story.txt"
    story.write_text("\n".join(STORY * 20) + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "phenaki.cli.sample", "--checkpoint", str(tiny_pipeline_dir),
                             "--prompts", str(story), "--steps", "40", "--out", str(tmp_path / "x.mp4")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(8)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, output[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["story.txt"]
