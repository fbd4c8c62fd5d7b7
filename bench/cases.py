"""One benchmark case per function; each runs in its own process (see run.py) and returns a dict.

Both implementations get random weights at the same sizes and random text
embeddings of the same shape (no T5 weights exist here): ours through `text_emb`,
the peer's through its `text_embeds` argument or a replaced `encode_texts`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch

from phenaki.kernels import tune_sampling, use_threads

from .common import TEXT_LEN, best_of, gflop, import_peer, load, peak_memory_mb

SAMPLE_STEPS = 12
GUIDANCE = 3.0


def _sync(device: str):
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def _autocast(device: str, dtype: str):
    if dtype == "bf16":
        return torch.autocast(device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _text(cfg: Any, batch: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    emb = torch.randn(batch, TEXT_LEN, cfg.transformer.text_dim, device=device)
    return emb, torch.ones(batch, TEXT_LEN, dtype=torch.bool, device=device)


def _kernels(model: torch.nn.Module, threads: int) -> dict[str, Any]:
    """The attention path and threads ours ran with (phenaki.kernels), for the results."""
    paths = {m.attention_path for m in model.modules() if hasattr(m, "attention_path")}
    return {"attention": "/".join(sorted(str(p) for p in paths)), "threads": threads or torch.get_num_threads()}


def _ids(cfg: Any, batch: int, device: str) -> torch.Tensor:
    t = cfg.tokenizer.token_frames(cfg.tokenizer.num_frames)
    h, w = cfg.transformer.token_grid
    return torch.randint(0, cfg.transformer.codebook_size, (batch, t, h, w), device=device)


# ----------------------------------------------------------------------------- builders


def _ours(cfg: Any, device: str):
    from phenaki.models.cvivit import CViViT
    from phenaki.models.maskgit import MaskGit

    torch.manual_seed(0)
    return CViViT(cfg.tokenizer).to(device).eval(), MaskGit(cfg.transformer).to(device)


def _peer(cfg: Any, device: str, peer: str):
    from .common import import_peer

    import_peer(peer)
    from phenaki_pytorch.cvivit import CViViT as PeerCViViT
    from phenaki_pytorch.phenaki_pytorch import MaskGit as PeerMaskGit
    from phenaki_pytorch.phenaki_pytorch import Phenaki as PeerPhenaki

    tok, tr = cfg.tokenizer, cfg.transformer
    torch.manual_seed(0)
    cvivit = PeerCViViT(
        dim=tok.dim, codebook_size=tok.codebook_size, image_size=tok.image_size, patch_size=tok.patch_size,
        temporal_patch_size=tok.temporal_patch_size, spatial_depth=tok.spatial_depth,
        temporal_depth=tok.temporal_depth, dim_head=tok.dim_head, heads=tok.heads, use_vgg_and_gan=False,
        lookup_free_quantization=False,
    )
    t = tok.token_frames(tok.num_frames)
    h, w = tr.token_grid
    maskgit = PeerMaskGit(dim=tr.dim, num_tokens=tr.codebook_size, max_seq_len=t * h * w, depth=tr.depth,
                          heads=tr.heads, dim_head=tr.dim_head, dim_context=tr.text_dim)
    model = PeerPhenaki(maskgit=maskgit, cvivit=cvivit, steps=SAMPLE_STEPS, text_embed_dim=tr.text_dim,
                        cond_drop_prob=0.1, sample_temperature=1.0).to(device)

    def encode_texts(texts, output_device=None):
        return torch.randn(len(texts), TEXT_LEN, tr.text_dim, device=output_device or device) + 0.1

    model.encode_texts = encode_texts  # random embeddings in place of T5
    return model


def build(impl: str, config: str, peer: str | None) -> tuple[Any, Callable, Callable, torch.nn.Module]:
    """(tokenizer config, encode(pixels) -> ids, decode(ids) -> pixels, the module)."""
    tok = load(config).tokenizer
    torch.manual_seed(0)
    if impl == "ours":
        from phenaki.models.cvivit import CViViT

        model = CViViT(tok).eval()
        return tok, model.encode, model.decode, model
    import_peer(peer)  # type: ignore[arg-type]
    from phenaki_pytorch.cvivit import CViViT as PeerCViViT

    peer_model = PeerCViViT(
        dim=tok.dim, codebook_size=tok.codebook_size, image_size=tok.image_size, patch_size=tok.patch_size,
        temporal_patch_size=tok.temporal_patch_size, spatial_depth=tok.spatial_depth,
        temporal_depth=tok.temporal_depth, dim_head=tok.dim_head, heads=tok.heads, use_vgg_and_gan=False,
        lookup_free_quantization=False,
    ).eval()

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        return peer_model(pixels, return_only_codebook_ids=True)

    def decode(ids: torch.Tensor) -> torch.Tensor:
        return peer_model.decode_from_codebook_indices(ids)

    return tok, encode, decode, peer_model


# ----------------------------------------------------------------------------- cases


def train_step(impl: str, config: str, batch: int, dtype: str, device: str, repeat: int,
               peer: str | None = None, depth: int | None = None) -> dict[str, Any]:
    """Samples/s of one MaskGIT training step (forward, backward, AdamW) on cached token ids."""
    cfg = load(config, depth)
    ids = _ids(cfg, batch, device)
    emb, mask = _text(cfg, batch, device)
    if impl == "ours":
        from phenaki.models.masking import maskgit_loss

        _, model = _ours(cfg, device)
        params = list(model.parameters())

        def loss() -> torch.Tensor:
            return maskgit_loss(model, ids, emb, mask, cond_drop_prob=0.1)[0]
    else:
        phenaki = _peer(cfg, device, peer)  # type: ignore[arg-type]
        model = phenaki.maskgit
        params = list(model.parameters())

        def loss() -> torch.Tensor:
            return phenaki(video_codebook_ids=ids, text_embeds=emb)

    model.train()
    threads = 0
    if impl == "ours":  # each side with the optimiser and kernels its own trainer chooses
        from phenaki.kernels import tune_training
        from phenaki.training.base import adamw_fused_kwargs

        optimizer = torch.optim.AdamW(params, lr=1e-4, **adamw_fused_kwargs(torch.device(device)))

        def autocast_loss() -> torch.Tensor:
            with _autocast(device, dtype):
                return loss()

        threads = tune_training(model, autocast_loss, {"bench": config, "batch": batch, "dtype": dtype},
                                device=device).threads
    else:
        optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step() -> None:
        with _autocast(device, dtype):
            value = loss()
        value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with use_threads(threads):
        seconds = best_of(step, repeat, _sync(device))
    return {"samples_per_s": batch / seconds, "step_s": seconds, "peak_mb": peak_memory_mb(device),
            "params_m": sum(p.numel() for p in params) / 1e6, "samples_per_s_gflop": gflop(step) / batch,
            **_kernels(model, threads)}


def sampling(impl: str, config: str, batch: int, dtype: str, device: str, repeat: int,
             peer: str | None = None, depth: int | None = None) -> dict[str, Any]:
    """Seconds per clip (12 steps, guidance 3, then decode to pixels) and tokens/s."""
    cfg = load(config, depth)
    frames = cfg.tokenizer.num_frames
    t = cfg.tokenizer.token_frames(frames)
    h, w = cfg.transformer.token_grid
    result: dict[str, Any] = {}
    if impl == "ours":
        from phenaki.sampling.search import draw
        from phenaki.sampling.settings import SamplingSettings

        settings = SamplingSettings(steps=SAMPLE_STEPS, guidance=GUIDANCE)

        tokenizer, model = _ours(cfg, device)
        model.eval()
        emb, mask = _text(cfg, batch, device)
        threads = tune_sampling(model, tokenizer, rows=batch, batch=2 * batch, token_frames=t, text_len=TEXT_LEN,
                                dtype=torch.bfloat16 if dtype == "bf16" else torch.float32, device=device).threads

        @torch.no_grad()
        def run() -> None:
            with _autocast(device, dtype):
                ids = draw(model, (emb, mask), None, settings, torch.Generator(device=device).manual_seed(0),
                           num_token_frames=t)
                tokenizer.decode(ids)

        # the transformer alone: one guided forward (batch 2B) and its FLOPs
        ids = torch.full((2 * batch, t, h, w), model.mask_id, device=device)
        context = model.prepare_context(torch.cat([emb, emb]), torch.cat([mask, mask]))

        @torch.no_grad()
        def forward() -> None:
            with _autocast(device, dtype):
                model(ids, context=context)

        flops = gflop(forward)
        with use_threads(threads):
            forward_s = best_of(forward, repeat, _sync(device))
        result.update({"forward_tflops": flops / forward_s / 1e3, "forward_gflop": flops, **_kernels(model, threads)})
    else:
        threads = 0
        phenaki = _peer(cfg, device, peer)  # type: ignore[arg-type]

        @torch.no_grad()
        def run() -> None:
            with _autocast(device, dtype):
                phenaki.sample(num_frames=frames, texts=["x"] * batch, cond_scale=GUIDANCE)

    with use_threads(threads):
        seconds = best_of(run, repeat, _sync(device))
    result.update({"clip_s": seconds / batch, "call_s": seconds, "tokens_per_s": batch * t * h * w / seconds,
                   "peak_mb": peak_memory_mb(device), "clip_s_gflop": gflop(run) / batch})
    return result


def story(impl: str, config: str, batch: int, dtype: str, device: str, repeat: int,
          peer: str | None = None, depth: int | None = None) -> dict[str, Any]:
    """A 3-scene story end to end (11 + 6 + 6 frames, 5 context frames), random weights."""
    cfg = load(config, depth)
    prompts = ["a red ball moves right", "the blue ball rises", "a green ball falls"]
    first, scene, context = cfg.sampling.first_frames, cfg.sampling.scene_frames, cfg.sampling.context_frames
    if impl == "ours":
        from phenaki.models.text import TextEncoder
        from phenaki.pipeline import Phenaki

        tokenizer, model = _ours(cfg, device)
        text_cfg = cfg.text
        text_cfg.kind, text_cfg.dim, text_cfg.depth, text_cfg.heads, text_cfg.ff_dim = "scratch", 256, 2, 4, 512
        text = TextEncoder.from_config(text_cfg, prompts)
        if text.dim != cfg.transformer.text_dim:  # paper width: project the scratch text up
            cfg.transformer.text_dim = text.dim
            from phenaki.models.maskgit import MaskGit

            torch.manual_seed(0)
            model = MaskGit(cfg.transformer)
        pipe = Phenaki(tokenizer, model, text, cfg.sampling, device=device, dtype=dtype)

        def run() -> None:
            # one draw per window of SAMPLE_STEPS steps at the same guidance, no polish, as the peer makes:
            # the comparison is of the same work (the config's own sampling defaults draw 36 steps)
            pipe.generate(prompts, seed=0, progress=False, num_samples=batch, candidates=1, polish=0.0,
                          steps=SAMPLE_STEPS, guidance=GUIDANCE)
    else:
        phenaki = _peer(cfg, device, peer)  # type: ignore[arg-type]

        @torch.no_grad()
        def run() -> None:
            with _autocast(device, dtype):
                video = phenaki.sample(num_frames=first, texts=[prompts[0]] * batch, cond_scale=GUIDANCE)
                for prompt in prompts[1:]:
                    video = torch.cat([video, phenaki.sample(
                        num_frames=scene, texts=[prompt] * batch, prime_frames=video[:, :, -context:],
                        cond_scale=GUIDANCE)], dim=2)

    seconds = best_of(run, repeat, _sync(device))
    return {"story_s": seconds / batch, "call_s": seconds, "frames": first + 2 * scene,
            "peak_mb": peak_memory_mb(device), "story_s_gflop": gflop(run) / batch}


def matmul_peak(impl: str, config: str, batch: int, dtype: str, device: str, repeat: int,
                peer: str | None = None, depth: int | None = None) -> dict[str, Any]:
    """The machine's matrix-multiply rate on 1024^3 products (the yardstick for FLOP/s)."""
    n = 1024
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    a = torch.randn(n, n, device=device, dtype=torch_dtype)
    b = torch.randn(n, n, device=device, dtype=torch_dtype)
    calls = 20 if device == "cpu" else 200

    def run() -> None:
        for _ in range(calls):
            torch.mm(a, b)

    seconds = best_of(run, repeat, _sync(device))
    return {"tflops": 2 * n**3 * calls / seconds / 1e12}


def tokenizer(impl: str, config: str, batch: int, dtype: str, device: str, repeat: int,
              peer: str | None = None, depth: int | None = None) -> dict[str, Any]:
    """Tokenizer encode / decode frames per second."""
    cfg = load(config)
    tok, encode, decode, model = build(impl, config, peer)
    model.to(device)
    pixels = torch.rand(batch, 3, tok.num_frames, *tok.image_size, device=device)
    threads, kernels = 0, {}
    with torch.no_grad(), _autocast(device, dtype):
        ids = encode(pixels)
        if impl == "ours":  # the kernels a pipeline would choose for this tokenizer here
            from phenaki.kernels import tune

            threads = tune({"what": "bench tokenizer", "config": config, "batch": batch, "dtype": dtype},
                           lambda: (encode(pixels), decode(ids)), [model], device=device).threads
            kernels = _kernels(model, threads)
        with use_threads(threads):
            enc = best_of(lambda: encode(pixels), repeat, _sync(device))
            dec = best_of(lambda: decode(ids), repeat, _sync(device))
        work = {"encode_fps_gflop": gflop(lambda: encode(pixels)), "decode_fps_gflop": gflop(lambda: decode(ids))}
    frames = batch * cfg.tokenizer.num_frames
    return {"encode_fps": frames / enc, "decode_fps": frames / dec, "peak_mb": peak_memory_mb(device),
            **{key: value / frames for key, value in work.items()}, **kernels}


CASES = {"tokenizer": tokenizer, "train": train_step, "sample": sampling, "story": story, "matmul": matmul_peak}


def data_loader(impl: str, config: str, batch: int, dtype: str, device: str, repeat: int,
                peer: str | None = None, depth: int | None = None) -> dict[str, Any]:
    """Samples/s of the data path alone: Shapes rendering, tar shards streamed and decoded, token cache.

    `impl` names the source (shapes | shards | tokens); `batch` is the DataLoader's
    worker count. Shards and the token cache are written once into a temporary folder
    from Shapes clips at the demo size (mp4, 11 frames at 8 fps).
    """
    import tempfile
    import time
    from pathlib import Path

    from torch.utils.data import DataLoader

    from phenaki.data import build_dataset
    from phenaki.training.base import ResumableSampler, collate_clips

    cfg = load(config)
    workers, items = batch, 512
    with tempfile.TemporaryDirectory() as tmp:
        if impl == "shapes":
            dataset = build_dataset(cfg.data)
            loader = DataLoader(dataset, batch_size=16, num_workers=workers, collate_fn=collate_clips,
                                sampler=ResumableSampler(len(dataset), seed=0))
        elif impl == "shards":
            from phenaki.data.export import export_shapes
            from phenaki.data.shards import ShardDataset, write_shards

            root = export_shapes(Path(tmp) / "clips", items, num_frames=cfg.data.num_frames, straddle_prob=0.0)
            write_shards(root, Path(tmp) / "shards", samples_per_shard=64)
            dataset = ShardDataset(str(Path(tmp) / "shards"), num_frames=cfg.data.num_frames, fps=cfg.data.fps,
                                   size=cfg.data.image_size, shuffle_buffer=256)
            loader = DataLoader(dataset, batch_size=16, num_workers=workers, collate_fn=collate_clips)
        else:
            from phenaki.data.shapes import ShapesDataset
            from phenaki.models.cvivit import CViViT
            from phenaki.training.token_cache import TokenDataset, tokenize_dataset

            shapes = ShapesDataset(num_samples=items, num_frames=cfg.data.num_frames, seed=0)
            tokenize_dataset(CViViT(cfg.tokenizer).eval(), shapes, Path(tmp) / "tokens", autocast=torch.bfloat16)
            dataset = TokenDataset(Path(tmp) / "tokens")
            loader = DataLoader(dataset, batch_size=16, num_workers=workers, collate_fn=collate_clips,
                                sampler=ResumableSampler(len(dataset), seed=0))
        stream = iter(loader)
        next(stream)  # workers started
        t0 = time.perf_counter()
        seen = 0
        while seen < items:
            batch_groups = next(stream)
            seen += sum(len(g["caption"]) for g in batch_groups)
        seconds = time.perf_counter() - t0
    return {"samples_per_s": seen / seconds, "workers": workers, "peak_mb": peak_memory_mb(device)}


CASES["data"] = data_loader
