"""Spikformer-8-384 (ImageNet, T=4) energy under the paper's convention, beside the paper's totals.

The paper reports 6.82 G OPs and 7.734 mJ for Spikformer-8-384 at T=4 with
``E = 4.6 pJ * FLOPs(first layer) + 0.9 pJ * sum SOP``. Those two totals fix the split between
MAC and AC energy once one decides what "OPs" sums: if OPs = first-layer FLOPs + SOPs, then
``FL1 = (E - 0.9 * OPs) / (4.6 - 0.9)``; if OPs are the SOPs alone, ``FL1 = (E - 0.9 * OPs) / 4.6``.
This script prints both readings beside the first-layer MAC count that neurostep's counter
measures on ``create_model("spikformer_8_384")``, and the whole-model counts of one forward. The
model convolves the static image once, not at each of the T=4 timesteps it is repeated over (the
frames are identical), so the count is one image's; the script also gives T times it, what a
stem that convolves every timestep would run.

The model here is untrained, so its firing rates (and hence its SOPs) say nothing about the
paper's trained network; only the first-layer MACs and the dense MACs are comparable.

    .venv/bin/python benchmarks/spikformer_energy.py           # one real forward (batch 1, 224x224)
    .venv/bin/python benchmarks/spikformer_energy.py --meta    # shapes only: dense counts, no compute
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import load_average, table, write_result  # noqa: E402

from neurostep.energy import count, format_count, format_energy  # noqa: E402

PAPER_OPS = 6.82e9        # "OPs (G)" of Spikformer-8-384, ImageNet, T=4
PAPER_ENERGY_PJ = 7.734e9  # 7.734 mJ
MAC_PJ, AC_PJ = 4.6, 0.9


def implied_split() -> dict[str, dict[str, float]]:
    """The MAC/AC split the paper's two totals imply, under both readings of "OPs"."""
    fl1_a = (PAPER_ENERGY_PJ - AC_PJ * PAPER_OPS) / (MAC_PJ - AC_PJ)   # OPs = FL1 + SOPs
    sops_a = PAPER_OPS - fl1_a
    sops_b = PAPER_OPS                                                # OPs = SOPs
    fl1_b = (PAPER_ENERGY_PJ - AC_PJ * sops_b) / MAC_PJ
    return {
        "ops_include_first_layer": {"first_layer_macs": fl1_a, "sops": sops_a, "energy_mac_pj": MAC_PJ * fl1_a,
                                    "energy_ac_pj": AC_PJ * sops_a},
        "ops_are_sops_only": {"first_layer_macs": fl1_b, "sops": sops_b, "energy_mac_pj": MAC_PJ * fl1_b,
                              "energy_ac_pj": AC_PJ * sops_b},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--meta", action="store_true",
                        help="count on the meta device: exact dense MACs without running the model")
    parser.add_argument("--quick", action="store_true", help="alias of --meta (for `neurostep bench --quick`)")
    args = parser.parse_args()
    meta = args.meta or args.quick
    load_before = load_average()

    from neurostep.models import create_model, list_models

    if "spikformer_8_384" not in list_models():
        print("spikformer_8_384 is not registered (neurostep.models); only the paper's implied split is shown")
        model = None
    else:
        device = torch.device("meta") if meta else torch.device("cpu")
        torch.manual_seed(0)
        with device:
            model = create_model("spikformer_8_384").eval()
        x = torch.randn(1, 3, 224, 224, device=device)

    out: dict[str, object] = {"paper": {"ops": PAPER_OPS, "energy_pj": PAPER_ENERGY_PJ}, "implied": implied_split()}
    lines = ["Spikformer-8-384, ImageNet 224, T=4 (paper: 6.82 G OPs, 7.734 mJ)", ""]
    for reading, v in out["implied"].items():
        lines.append(f"paper, implied ({reading.replace('_', ' ')}): first-layer MACs "
                     f"{format_count(v['first_layer_macs'])} -> {format_energy(v['energy_mac_pj'])} MAC energy; "
                     f"SOPs {format_count(v['sops'])} -> "
                     f"{format_energy(v['energy_ac_pj'])} AC energy")
    if model is not None:
        t0 = time.perf_counter()
        report = count(model, x, mode="spikformer")
        elapsed = time.perf_counter() - t0
        T = model.T
        first = report.total.first_layer_macs
        first_path = next((n.split("'")[1] for n in report.notes if "first layer" in n), "?")
        lines += [
            "",
            f"neurostep count ({'meta device, shapes only' if meta else 'one real forward, batch 1'}, "
            f"{elapsed:.1f} s):",
            f"  first layer {first_path}: {format_count(first)} MACs (the repeated image convolved once; "
            f"{format_count(first * T)} if convolved at each of T={T} steps) -> {format_energy(first * MAC_PJ)} "
            "at 4.6 pJ",
            f"  dense MACs of the whole model over T={T}: {format_count(report.total.dense_macs)}",
        ]
        if not meta:
            rate = report.total.spike_rate
            lines.append(f"  untrained model: spike rate {rate if rate is None else round(rate, 4)}, SOPs "
                         f"{format_count(report.total.sops)}, energy {format_energy(report.energy_pj)} "
                         "(not comparable with the paper: its rates come from a trained network)")
        out["measured"] = {"meta": meta, "T": T, "first_layer": first_path, "first_layer_macs": first,
                           "first_layer_macs_every_step": first * T, "dense_macs": report.total.dense_macs,
                           "sops": report.total.sops, "energy_pj": report.energy_pj,
                           "spike_rate": report.total.spike_rate}
    print("\n".join(lines))
    rows = [[f"paper, if OPs = {'first-layer FLOPs + SOPs' if key == 'ops_include_first_layer' else 'SOPs only'}",
             format_count(v["first_layer_macs"]) + " (implied)", format_count(v["sops"]),
             format_energy(v["energy_mac_pj"]), format_energy(v["energy_ac_pj"]),
             format_energy(v["energy_mac_pj"] + v["energy_ac_pj"])] for key, v in out["implied"].items()]
    if "measured" in out:
        m = out["measured"]
        how = "shapes only (meta device)" if m["meta"] else "one forward, batch 1, untrained"
        rows.append([f"neurostep count, {how}", f"{format_count(m['first_layer_macs'])}, image convolved once "
                     f"({m['first_layer']})", "-" if m["meta"] else format_count(m["sops"]),
                     format_energy(m["first_layer_macs"] * MAC_PJ), "-", "-"])
    columns = ["", "first-layer MACs", "SOPs", "MAC energy", "AC energy", "total"]
    path = Path(__file__).resolve().parent / "results" / "spikformer_energy.json"
    write_result(path, out, load_before=load_before,
                 tables=[table("Spikformer-8-384, ImageNet 224, T=4, beside the paper's 6.82 G OPs and 7.734 mJ",
                               columns, rows)], summary=[])
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
