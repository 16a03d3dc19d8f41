"""GPU attention micro-benchmark: the Triton paged kernels against the torch SDPA gather path.

One attention layer of a model shape (default Qwen3-8B's: 32 query heads, 8 KV heads, head_dim
128) in bf16 over a paged KV cache whose blocks are shuffled, as a long-running server's are:

- decode: one query per sequence at `--batches` x `--contexts`, every sequence at the same
  context, the block tables as wide as the context needs (the SDPA path gathers and masks all
  of it); the kernels at their default split count;
- prefill: one sequence of `--prefill` new tokens over an empty cache.

Each row prints both times (best of `--repeats` medians of triton.testing.do_bench), the
speed-up (SDPA time over the kernels') and the largest difference of the two outputs.
`--window` and `--softcap` time Gemma-2-like layers. Refuses without CUDA.

On the device machine, from the repository root: `python3 bench/attention_gpu.py`.
"""

from __future__ import annotations

import argparse
from functools import partial

import torch

from cortex.neuron.models import attention, triton_attention
from cortex.neuron.models.attention import AttentionMetadata


def paged(
    lengths: list[int], block_size: int, kv_heads: int, dim: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random bf16 cache holding `lengths` tokens per sequence in shuffled blocks, and the
    block tables [B, widest]."""
    needed = [-(-n // block_size) for n in lengths]
    order = torch.randperm(sum(needed), device=device).int()
    width = max(needed)
    tables = torch.zeros(len(lengths), width, dtype=torch.int32, device=device)
    start = 0
    for i, count in enumerate(needed):
        tables[i, :count] = order[start : start + count]
        start += count
    shape = (sum(needed), block_size, kv_heads, dim)
    k = torch.randn(shape, dtype=torch.bfloat16, device=device)
    return k, torch.randn_like(k), tables


def metadata(tables: torch.Tensor, lengths: list[int], new: list[int]) -> AttentionMetadata:
    device = tables.device
    starts = [0]
    for m in new:
        starts.append(starts[-1] + m)
    return AttentionMetadata(
        slot_mapping=torch.zeros(sum(new), dtype=torch.long, device=device),  # unused here
        block_tables=tables,
        context_lens=torch.tensor(lengths, dtype=torch.int32, device=device),
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        is_decode=all(m == 1 for m in new),
        max_context_len=max(lengths),
        query_start_loc_host=starts,
        context_lens_host=lengths,
    )


def best_ms(fn, repeats: int) -> float:
    from triton.testing import do_bench

    return min(do_bench(fn) for _ in range(repeats))


def row(label: str, kernel, sdpa, repeats: int) -> None:
    diff = (kernel().float() - sdpa().float()).abs().max().item()
    t_kernel, t_sdpa = best_ms(kernel, repeats), best_ms(sdpa, repeats)
    print(
        f"{label:<28} triton {t_kernel * 1e3:9.1f} us   sdpa {t_sdpa * 1e3:9.1f} us   "
        f"x{t_sdpa / t_kernel:5.2f}   max|diff| {diff:.2e}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--contexts", default="1024,4096,16384,32768")
    parser.add_argument("--prefill", default="512,2048,8192", help="prefill lengths")
    parser.add_argument("--window", type=int, default=None)
    parser.add_argument("--softcap", type=float, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("no CUDA device here: this benchmark times GPU kernels")
    device = torch.device("cuda", 0)
    # attention.py's functions take the SDPA path here even on CUDA; the kernels are called
    # directly.
    attention._kernels = lambda device: None
    torch.manual_seed(0)
    layer = {"window": args.window, "scale": None, "softcap": args.softcap}
    print(
        f"{torch.cuda.get_device_name(device)}; heads {args.heads}/{args.kv_heads}, "
        f"head_dim {args.head_dim}, block {args.block_size}, {layer}"
    )

    for batch in map(int, args.batches.split(",")):
        for ctx in map(int, args.contexts.split(",")):
            lengths = [ctx] * batch
            k, v, tables = paged(lengths, args.block_size, args.kv_heads, args.head_dim, device)
            attn = metadata(tables, lengths, [1] * batch)
            q = torch.randn(batch, args.heads, args.head_dim, dtype=torch.bfloat16, device=device)
            # The model computes the SDPA path's block index and masks once per step.
            sdpa_attn = attention.with_decode_inputs(attn, args.block_size, [args.window], q.dtype)
            kernel = partial(
                triton_attention.paged_decode, q, k, v, attn.block_tables, attn.context_lens
            )
            sdpa = partial(attention.decode_attention, q, k, v, sdpa_attn)
            row(
                f"decode b{batch} ctx{ctx}",
                partial(kernel, **layer),
                partial(sdpa, **layer),
                args.repeats,
            )

    for n in map(int, args.prefill.split(",")):
        k, v, tables = paged([n], args.block_size, args.kv_heads, args.head_dim, device)
        attn = metadata(tables, [n], [n])
        q = torch.randn(n, args.heads, args.head_dim, dtype=torch.bfloat16, device=device)
        new_k, new_v = gathered(k, v, tables, n)
        starts = attn.query_start_loc
        kernel = partial(
            triton_attention.paged_prefill, q, k, v, tables, attn.context_lens, starts, n
        )
        sdpa = partial(attention.prefill_attention, q, new_k, new_v, k, v, attn)
        row(f"prefill {n}", partial(kernel, **layer), partial(sdpa, **layer), args.repeats)


def gathered(
    k: torch.Tensor, v: torch.Tensor, tables: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `n` tokens' K/V of sequence 0 [n, KVH, D]: the SDPA prefill's own inputs."""
    blocks = tables[0].long()
    return k[blocks].flatten(0, 1)[:n], v[blocks].flatten(0, 1)[:n]


if __name__ == "__main__":
    main()
