"""Where the time goes in the two hot paths, on the CPU this runs on.

The two paths are those `python -m bench` times: one guided MaskGit forward of sampling
(batch 2B of all-mask ids, the text context prepared once, as `bench.cases.sampling`
times it) and one MaskGIT training step (`maskgit_loss`, backward, fused AdamW, as
`bench.cases.train_step` runs it). For each it prints the achieved GFLOP/s against the
machine's own measured matrix-product speed, then the self CPU time of the aten ops
grouped into categories (matmul, attention, softmax, elementwise, norm, copy/layout,
optimizer, other, and python/framework: the time in an iteration spent outside every aten
op) and the costliest individual ops with their input shapes. Run it on each CPU kind to
write down, per kind, which kernels a speed-up has to come from.

    python -m bench.profile                                  # demo config, both cases, dtype auto
    python -m bench.profile --case sample --dtype bf16 --attention explicit --repeat 3
    python -m bench.profile --case train --batch 4 --threads 1 --json runs/profile.json
    python -m bench.profile --config paper --paper-depth 2 --dtype bf16

An AVX2-only CPU can be emulated on a newer one (the machine line then shows torch
kernels AVX2; the measured matrix-product speed is that of the emulated kernels):

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python -m bench.profile
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import torch

from .cases import _autocast, _ids, _text
from .common import best_of, gflop, load, machine
from .run import machine_line

Step = Callable[[], None]

CATEGORIES = ("matmul", "attention", "softmax", "elementwise", "norm", "copy/layout", "optimizer", "other",
              "python/framework")
"""Report order. `python/framework` is no aten op: it is each iteration's time outside every op
(Python, module calls, autograd bookkeeping), so that the shares add up to the whole iteration."""

ITERATION = "bench.profile.iteration"
"""The label wrapped round each profiled iteration; its self time is the time outside every op."""

# exact aten op names (without the "aten::" prefix), by category
_EXACT = {
    "matmul": {"mm", "addmm", "bmm", "matmul", "linear", "baddbmm", "addbmm", "addmv", "mv", "dot", "vdot",
               "einsum", "tensordot", "_addmm_activation", "linear_backward", "convolution", "_convolution",
               "conv1d", "conv2d", "conv3d", "convolution_backward", "_weight_int8pack_mm"},
    "attention": {"scaled_dot_product_attention", "_scaled_dot_product_attention_math",
                  "_scaled_dot_product_flash_attention_for_cpu",
                  "_scaled_dot_product_flash_attention_for_cpu_backward",
                  "_scaled_dot_product_efficient_attention", "_scaled_dot_product_fused_attention_overrideable",
                  "_flash_attention_forward", "_flash_attention_backward"},
    "softmax": {"softmax", "_softmax", "_softmax_backward_data", "log_softmax", "_log_softmax",
                "_log_softmax_backward_data", "_safe_softmax", "special_softmax"},
    # memory-bound one-pass kernels: pointwise maths, dropout, fills and reductions alike
    "elementwise": {"add", "add_", "mul", "mul_", "div", "div_", "sub", "sub_", "rsub", "neg", "silu", "silu_",
                    "silu_backward", "gelu", "gelu_", "gelu_backward", "relu", "relu_", "threshold_backward",
                    "sigmoid", "sigmoid_backward", "tanh", "tanh_backward", "exp", "exp_", "log", "log_", "pow",
                    "sqrt", "rsqrt", "abs", "sign", "clamp", "clamp_", "clamp_min", "clamp_max", "minimum",
                    "maximum", "masked_fill", "masked_fill_", "where", "lerp", "lerp_", "addcmul", "addcmul_",
                    "addcdiv", "addcdiv_", "fill_", "zero_", "zeros", "zeros_like", "ones", "ones_like", "full",
                    "full_like", "dropout", "native_dropout", "native_dropout_backward", "bernoulli_",
                    "eq", "ne", "lt", "le", "gt", "ge", "logical_not", "logical_and", "logical_or",
                    "bitwise_not", "bitwise_and", "bitwise_or", "sum", "mean", "amax", "amin", "max", "min",
                    "any", "all", "prod", "norm", "linalg_vector_norm", "reciprocal", "square", "mse_loss",
                    "cos", "sin", "erf", "floor", "round", "nan_to_num"},
    "norm": {"layer_norm", "native_layer_norm", "native_layer_norm_backward", "rms_norm", "_fused_rms_norm",
             "_fused_rms_norm_backward", "group_norm", "native_group_norm", "native_group_norm_backward",
             "batch_norm", "native_batch_norm", "native_batch_norm_backward", "_batch_norm_impl_index"},
    "copy/layout": {"copy_", "_to_copy", "to", "contiguous", "clone", "cat", "stack", "index_select", "gather",
                    "scatter", "scatter_", "scatter_add", "scatter_add_", "index", "index_put_", "_index_put_impl_",
                    "index_add_", "masked_select", "masked_scatter", "embedding", "embedding_backward",
                    "embedding_dense_backward", "constant_pad_nd", "pad", "repeat", "repeat_interleave", "flip",
                    "roll", "tril", "triu", "chunk", "split", "split_with_sizes", "unbind", "view", "_unsafe_view",
                    "reshape", "transpose", "permute", "t", "expand", "expand_as", "unsqueeze", "squeeze", "select",
                    "slice", "narrow", "as_strided", "flatten", "unflatten", "view_as", "alias", "detach",
                    "lift_fresh", "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided",
                    "new_zeros", "resize_", "set_", "select_backward", "slice_backward", "_reshape_alias",
                    "unfold", "col2im", "im2col"},
}
# op name prefixes (without "aten::"), checked after the exact names
_PREFIXES = (
    ("_scaled_dot_product", "attention"),
    ("scaled_dot_product", "attention"),
    ("mkldnn_", "matmul"),
    ("_mkldnn_", "matmul"),
    ("resolve_", "copy/layout"),
    ("_fused_adam", "optimizer"),
    ("_fused_sgd", "optimizer"),
    ("_foreach_", "optimizer"),
)
# non-aten events: the iteration label and the framework's own bookkeeping round the ops
_FRAMEWORK_PREFIXES = (ITERATION, "autograd::", "Optimizer.", "ProfilerStep", "torch::autograd")


def categorise(op_name: str) -> str:
    """The category of one profiler event name, e.g. "aten::addmm" -> "matmul".

    Pure, so the grouping can be checked without profiling. oneDNN matrix products
    ("mkldnn::...", "onednn::...") count as matmul; the events the framework records round
    the ops (autograd nodes such as "MmBackward0", optimiser labels, the iteration label) as
    python/framework; every other unknown name as other.
    """
    namespace, sep, name = op_name.partition("::")
    if namespace in ("mkldnn", "onednn"):
        return "matmul"
    if op_name.startswith(_FRAMEWORK_PREFIXES) or not sep:  # no namespace: autograd nodes ("MmBackward0")
        return "python/framework"
    if namespace != "aten" or not name:
        return "other"
    for category, names in _EXACT.items():
        if name in names:
            return category
    for prefix, category in _PREFIXES:
        if name.startswith(prefix):
            return category
    return "other"


# ----------------------------------------------------------------------------- workloads


def _autocast_name(dtype: torch.dtype) -> str:
    """The dtype as bench.cases names it (its autocast helper takes a name)."""
    return "bf16" if dtype == torch.bfloat16 else "fp32"


def sample_forward(model: torch.nn.Module, text_emb: torch.Tensor, text_mask: torch.Tensor, token_frames: int,
                   dtype: torch.dtype = torch.float32) -> Step:
    """One guided MaskGit forward as sampling runs it: conditional and null rows together
    (batch 2B), all ids masked, the text context prepared once outside the timed call."""
    model.eval()
    batch = text_emb.shape[0]
    h, w = model.token_grid
    ids = torch.full((2 * batch, token_frames, h, w), model.mask_id, device=text_emb.device)
    with torch.no_grad():
        context = model.prepare_context(torch.cat([text_emb, text_emb]), torch.cat([text_mask, text_mask]))

    @torch.no_grad()
    def forward() -> None:
        with _autocast("cpu", _autocast_name(dtype)):
            model(ids, context=context)

    return forward


def train_step(model: torch.nn.Module, ids: torch.Tensor, text_emb: torch.Tensor, text_mask: torch.Tensor,
               dtype: torch.dtype = torch.float32) -> Step:
    """One MaskGIT training step as the trainer runs it: loss under autocast, backward, AdamW
    (fused where torch has the kernel), gradients cleared."""
    from phenaki.models.masking import maskgit_loss
    from phenaki.training.base import adamw_fused_kwargs

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, **adamw_fused_kwargs(torch.device("cpu")))

    def step() -> None:
        with _autocast("cpu", _autocast_name(dtype)):
            loss = maskgit_loss(model, ids, text_emb, text_mask, cond_drop_prob=0.1)[0]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def build_case(case: str, config: str, batch: int, dtype: torch.dtype, depth: int | None = None,
               attention: str | None = None) -> Step:
    """The `sample` or `train` step at a project config, random weights and random text, as bench.run builds it;
    `attention` forces the attention path (sdpa | explicit; None: the built-in rule)."""
    from phenaki.kernels import set_attention_path
    from phenaki.models.maskgit import MaskGit

    cfg = load(config, depth)
    torch.manual_seed(0)
    model = MaskGit(cfg.transformer)
    set_attention_path(model, attention)
    emb, mask = _text(cfg, batch, "cpu")
    if case == "sample":
        return sample_forward(model, emb, mask, cfg.tokenizer.token_frames(cfg.tokenizer.num_frames), dtype)
    return train_step(model, _ids(cfg, batch, "cpu"), emb, mask, dtype)


# ----------------------------------------------------------------------------- measuring


def throughput(fn: Step, repeat: int, peak_gflops: float | None) -> dict[str, Any]:
    """Best-of time, counted GFLOP, GFLOP/s and its share of the machine's matrix-product speed:
    how far the path is from what the same work would take at the product kernels' rate."""
    seconds = best_of(fn, repeat)
    work = gflop(fn)
    rate = work / seconds
    return {"seconds": seconds, "gflop": work, "gflops": rate,
            "peak_pct": 100 * rate / peak_gflops if peak_gflops else None}


def profile_ops(fn: Step, repeat: int = 5, warmup: int = 1, top: int = 12) -> dict[str, Any]:
    """Self CPU time per category and the costliest ops (by input shape), per iteration.

    Each iteration is wrapped in a label whose self time is what no op accounts for, so the
    categories' shares add up to the profiled iterations' whole time. Times are per
    iteration in ms; the profiler's own overhead makes them somewhat above the timed ones.
    """
    from torch.profiler import ProfilerActivity, profile, record_function

    for _ in range(warmup):
        fn()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(repeat):
            with record_function(ITERATION):
                fn()
    by_name = prof.key_averages()
    totals = {name: {"ms": 0.0, "calls": 0.0} for name in CATEGORIES}
    for event in by_name:
        entry = totals[categorise(event.key)]
        entry["ms"] += event.self_cpu_time_total / 1e3 / repeat
        if event.key != ITERATION:
            entry["calls"] += event.count / repeat
    whole = sum(entry["ms"] for entry in totals.values()) or 1.0
    categories = {name: {**entry, "share": 100 * entry["ms"] / whole} for name, entry in totals.items()}
    ops = sorted((e for e in prof.key_averages(group_by_input_shape=True) if e.key != ITERATION),
                 key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    top_ops = [{"op": e.key, "category": categorise(e.key), "shapes": _shapes(e.input_shapes),
                "ms": e.self_cpu_time_total / 1e3 / repeat, "calls": e.count / repeat,
                "share": 100 * e.self_cpu_time_total / 1e3 / repeat / whole} for e in ops]
    return {"iteration_ms": whole, "repeat": repeat, "categories": categories, "top": top_ops}


def _shapes(shapes: Any) -> str:
    """Input shapes as one short string; the empty lists of non-tensor arguments dropped."""
    return ", ".join(str(list(s)) for s in (shapes or []) if s) or "-"


# ----------------------------------------------------------------------------- reporting


def category_table(result: dict[str, Any]) -> str:
    """Markdown: category | ms per iteration | share % | calls per iteration, costliest first."""
    lines = ["| category | ms per iteration | share % | calls per iteration |", "|---|---|---|---|"]
    rows = sorted(result["categories"].items(), key=lambda item: item[1]["ms"], reverse=True)
    lines += [f"| {name} | {row['ms']:.2f} | {row['share']:.1f} | {row['calls']:.0f} |" for name, row in rows
              if row["ms"] > 0 or row["calls"] > 0]
    lines.append(f"| total | {result['iteration_ms']:.2f} | 100.0 | - |")
    return "\n".join(lines)


def top_table(result: dict[str, Any], width: int = 90) -> str:
    """Markdown: the costliest individual ops with their input shapes."""
    lines = ["| op | category | input shapes | ms per iteration | share % | calls per iteration |",
             "|---|---|---|---|---|---|"]
    for op in result["top"]:
        shapes = op["shapes"] if len(op["shapes"]) <= width else op["shapes"][: width - 3] + "..."
        lines.append(f"| {op['op']} | {op['category']} | {shapes} | {op['ms']:.2f} | {op['share']:.1f} | "
                     f"{op['calls']:.0f} |")
    return "\n".join(lines)


def speed_line(case: str, batch: int, dtype: torch.dtype, speed: dict[str, Any]) -> str:
    """One line: time, counted work, achieved rate and its share of the matrix-product speed."""
    peak = f"{speed['peak_pct']:.0f}% of the {_autocast_name(dtype)} matrix-product speed" \
        if speed["peak_pct"] is not None else "no measured matrix-product speed"
    return (f"{case}, batch {batch}, {_autocast_name(dtype)}: {1e3 * speed['seconds']:.1f} ms per iteration (best), "
            f"{speed['gflop']:.2f} GFLOP, {speed['gflops']:.1f} GFLOP/s = {peak}")


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="demo", choices=["demo", "paper"])
    parser.add_argument("--case", default="both", choices=["sample", "train", "both"])
    parser.add_argument("--batch", type=int, default=None, help="default: 1 for sample, 16 for train")
    parser.add_argument("--dtype", default="auto", choices=["fp32", "bf16", "auto"],
                        help="auto (default): bf16 where this CPU computes it fast, as the pipeline chooses")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--repeat", type=int, default=5, help="profiled (and timed) iterations")
    parser.add_argument("--attention", default="default", choices=["sdpa", "explicit", "default"],
                        help="attention path (default: the built-in rule, explicit for bf16, else SDPA)")
    parser.add_argument("--paper-depth", type=int, default=2, help="transformer layers at the paper config")
    parser.add_argument("--json", default=None, help="write the figures and tables here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)  # before the machine's product speed is measured, at the same threads
    from phenaki.utils.torch_utils import resolve_dtype

    dtype = resolve_dtype(args.dtype, torch.device("cpu"))
    info = machine()
    peak = info.get(f"{_autocast_name(dtype)}_matmul_gflops")
    depth = args.paper_depth if args.config == "paper" else None
    text = [machine_line(info) + f"; {torch.get_num_threads()} torch threads; attention {args.attention}",
            f"config {args.config}" + (f" (transformer depth {depth})" if depth else "")]
    print("\n".join(text), flush=True)
    results: dict[str, Any] = {}
    for case in (["sample", "train"] if args.case == "both" else [args.case]):
        batch = args.batch or (1 if case == "sample" else 16)
        fn = build_case(case, args.config, batch, dtype, depth, None if args.attention == "default" else args.attention)
        ops = profile_ops(fn, args.repeat)  # first: its warm-up and iterations warm the timed calls too
        speed = throughput(fn, args.repeat, peak)
        block = ["", "## " + speed_line(case, batch, dtype, speed), "", category_table(ops), "", top_table(ops)]
        print("\n".join(block), flush=True)
        text += block
        results[case] = {"batch": batch, "dtype": _autocast_name(dtype), **speed, **ops}
    if args.json:
        meta = {"date": str(date.today()), "machine": info, "threads": torch.get_num_threads(),
                "config": args.config, "depth": depth, "command": "python -m bench.profile " + " ".join(sys.argv[1:])}
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"meta": meta, "results": results, "table": "\n".join(text)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
