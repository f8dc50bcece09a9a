"""Analytic multiply-add and parameter counts (docs/model.md §9, paper Table 1).

Unit: one multiply-add (MA) = one multiplication followed by an addition, as in a dot product. Biases,
activations and pooling are not counted. Two conventions:

- "full": every multiply-add the network performs in its convolutions and fully connected layers, including
  the 512x512 hidden-to-hidden block of the recurrent layer. The 256 elementwise gate multiplies per patch
  are listed as their own row ("gate") and are NOT in the full total. musica68: 96,566,784 for 3 iterations.
- "paper": the paper's Table 1 reading: full, minus the hidden-to-hidden block, plus the gate multiplies,
  truncated to whole millions. This is the only simple reading that reproduces all five rows (without the
  gate multiplies the 68/34 row is 47.995 M, which truncates to 47, not the paper's 48).

The paper's "Memory [MB]" column is the parameter count (weights + biases) of ONE iteration without the
hidden-to-hidden block, in millions. It reproduces 68/34, 68/19 and 98/98 to the printed digits, is 0.04
below the paper for 68/68 (9.06 vs 9.10), and its 98/49 entry (5.94) is the count for 44 patches
(49 gives 6.60): a known inconsistency of the paper.
"""
from __future__ import annotations

from .errors import InputError
from .network import CONV_FILTERS, FEATURES, HIDDEN, IN_CHANNELS
from .geometry import PATCH_SIZE
from .weights import N_ITERATIONS

LAYERS = ("conv1", "conv2", "attention", "gate", "recurrent_patches", "recurrent_hidden", "output")

# the paper's Table 1: (N, P) -> (multiply-adds in millions, "Memory [MB]")
PAPER_TABLE1 = {(68, 68): (95, 9.10), (68, 34): (48, 4.60), (68, 19): (26, 2.64),
                (98, 98): (138, 13.02), (98, 49): (69, 5.94)}


def iteration_macs(n_landmarks: int, n_patches: int) -> dict[str, int]:
    """Multiply-adds of ONE iteration for ONE face, per layer (see LAYERS)."""
    c1 = PATCH_SIZE - 2                 # 12: conv1 output side
    c2 = c1 // 2 - 2                    # 4: conv2 output side
    per_patch = {
        "conv1": c1 * c1 * CONV_FILTERS * 3 * 3 * IN_CHANNELS,      # 124,416
        "conv2": c2 * c2 * CONV_FILTERS * 3 * 3 * CONV_FILTERS,     # 147,456
        "attention": FEATURES * FEATURES,                           # 65,536
        "gate": FEATURES,                                           # 256 multiplies
        "recurrent_patches": FEATURES * HIDDEN,                     # 131,072
    }
    macs = {k: v * n_patches for k, v in per_patch.items()}
    macs["recurrent_hidden"] = HIDDEN * HIDDEN                      # 262,144
    macs["output"] = HIDDEN * (2 * n_landmarks + 1)
    return macs


def total_macs(n_landmarks: int, n_patches: int, iterations: int = N_ITERATIONS,
               convention: str = "full") -> int:
    """Total multiply-adds of `iterations` iterations under a convention ("full" or "paper", not truncated)."""
    m = iteration_macs(n_landmarks, n_patches)
    if convention == "full":
        per_it = sum(v for k, v in m.items() if k != "gate")
    elif convention == "paper":
        per_it = sum(v for k, v in m.items() if k != "recurrent_hidden")
    else:
        raise InputError(f"unknown convention {convention!r}: use 'full' or 'paper'")
    return per_it * iterations


def iteration_parameters(n_landmarks: int, n_patches: int) -> dict[str, int]:
    """Parameters (weights + biases) of ONE iteration, per layer; the recurrent layer split as in LAYERS."""
    return {
        "conv1": 3 * 3 * IN_CHANNELS * CONV_FILTERS + CONV_FILTERS,
        "conv2": 3 * 3 * CONV_FILTERS * CONV_FILTERS + CONV_FILTERS,
        "attention": FEATURES * FEATURES + FEATURES,
        "recurrent_patches": n_patches * FEATURES * HIDDEN + HIDDEN,   # the bias goes with this part
        "recurrent_hidden": HIDDEN * HIDDEN,
        "output": HIDDEN * (2 * n_landmarks + 1) + 2 * n_landmarks + 1,
    }


def total_parameters(n_landmarks: int, n_patches: int, iterations: int = N_ITERATIONS) -> int:
    """All parameters of the model (every iteration, hidden block included). musica68: 27,965,307."""
    return sum(iteration_parameters(n_landmarks, n_patches).values()) * iterations


def paper_memory_column(n_landmarks: int, n_patches: int) -> float:
    """The paper's "Memory [MB]": parameters of one iteration without the hidden block, in millions."""
    p = iteration_parameters(n_landmarks, n_patches)
    return (sum(p.values()) - p["recurrent_hidden"]) / 1e6


def table1_rows():
    """Rows reproducing the paper's Table 1: dicts with our counts beside the paper's printed values."""
    rows = []
    for (N, P), (paper_ma, paper_mem) in PAPER_TABLE1.items():
        paper_ma_ours = total_macs(N, P, convention="paper")
        rows.append({
            "N": N, "P": P,
            "full_M": total_macs(N, P, convention="full") / 1e6,
            "paper_convention_M": paper_ma_ours / 1e6,
            "paper_convention_int": paper_ma_ours // 1_000_000,
            "paper_ma": paper_ma,
            "memory_M": paper_memory_column(N, P),
            "paper_memory": paper_mem,
            "params_total": total_parameters(N, P),
        })
    return rows


def format_table1() -> str:
    """The Table 1 reproduction as text."""
    lines = ["Paper Table 1 reproduced (multiply-adds in millions, 3 iterations; see conventions below)",
             f"{'N':>3} {'P':>3} | {'full':>8} {'paper conv.':>11} {'-> int':>6} {'paper':>5} {'ok':>3} | "
             f"{'Memory':>7} {'paper':>6} {'ok':>3} | {'params (all)':>12}"]
    for r in table1_rows():
        ma_ok = r["paper_convention_int"] == r["paper_ma"]
        if round(r["memory_M"], 2) == r["paper_memory"]:
            mem_ok = "yes"
        elif abs(r["memory_M"] - r["paper_memory"]) < 0.05:
            mem_ok = "~a"                       # equal at the one decimal the paper may have rounded to
        elif round(paper_memory_column(r["N"], 44), 2) == r["paper_memory"]:
            mem_ok = "P44"                      # the printed value is the 44-patch count
        else:
            mem_ok = "NO"
        lines.append(f"{r['N']:>3} {r['P']:>3} | {r['full_M']:>8.3f} {r['paper_convention_M']:>11.3f} "
                     f"{r['paper_convention_int']:>6d} {r['paper_ma']:>5d} {'yes' if ma_ok else 'NO':>3} | "
                     f"{r['memory_M']:>7.2f} {r['paper_memory']:>6.2f} {mem_ok:>3} | "
                     f"{r['params_total']:>12,d}")
    lines += [
        "full: every multiply-add of the convolutions and fully connected layers, hidden-to-hidden included;",
        "      the 256 gate multiplies per patch are not in it.",
        "paper conv.: full - hidden-to-hidden (512x512 per iteration) + gate multiplies, truncated to millions.",
        "Memory: parameters of ONE iteration without the hidden-to-hidden block, in millions.",
        "~a: 9.06 computed vs 9.10 printed for 68/68, equal at one decimal (9.1); no simple convention gives 9.10.",
        f"P44: the 98/49 row prints the count for 44 patches ({paper_memory_column(98, 44):.2f}); 49 patches "
        f"give {paper_memory_column(98, 49):.2f}: a known inconsistency of the paper (its Table 3 says MuSiCa44).",
    ]
    return "\n".join(lines)


def format_breakdown(n_landmarks: int, n_patches: int) -> str:
    """Per-layer multiply-adds and parameters of one iteration and of the whole model, as text."""
    m = iteration_macs(n_landmarks, n_patches)
    p = iteration_parameters(n_landmarks, n_patches)
    lines = [f"N = {n_landmarks} landmarks, P = {n_patches} patches, {N_ITERATIONS} iterations",
             f"{'layer':<18} {'MA / iteration':>15} {'MA / 3 it.':>13} {'params / it.':>13}"]
    for k in LAYERS:
        lines.append(f"{k:<18} {m[k]:>15,d} {m[k] * N_ITERATIONS:>13,d} {p.get(k, 0):>13,d}")
    lines.append(f"{'total (full)':<18} {total_macs(n_landmarks, n_patches, 1):>15,d} "
                 f"{total_macs(n_landmarks, n_patches):>13,d} {sum(p.values()):>13,d}")
    lines.append(f"{'total (paper)':<18} {total_macs(n_landmarks, n_patches, 1, 'paper'):>15,d} "
                 f"{total_macs(n_landmarks, n_patches, convention='paper'):>13,d}")
    tp = total_parameters(n_landmarks, n_patches)
    lines.append(f"parameters, all iterations: {tp:,d} ({tp * 4 / 1e6:.1f} MB as float32, "
                 f"{tp * 2 / 1e6:.1f} MB as float16)")
    lines.append("gate: elementwise multiplies, listed but not in the full total; "
                 "the recurrent bias is counted with recurrent_patches.")
    return "\n".join(lines)
