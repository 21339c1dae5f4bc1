"""One torchrun worker that checks every sequence-parallel op and model against one process.

Launched by the tests as ``torchrun --standalone --nproc_per_node P sp_worker.py OUT_DIR``. Every rank
builds the same whole inputs (same seeds), runs the one-process reference on the whole sequence and the
sequence-parallel version on its chunk, and writes ``OUT_DIR/rank{r}.json``: per check, the largest
``|parallel - reference| - tol * |reference|`` over outputs and gradients (a check passes when it is at
most ``tol``) and the tolerance used. Errors that must be raised are recorded as booleans.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from neurostep.distributed import SequenceParallel, init_sequence_parallel, spikegpt_scan
from neurostep.kernels.causal_conv1d import causal_conv1d
from neurostep.kernels.decayed_linear_attention import decayed_linear_attention
from neurostep.kernels.lif import LIFState, lif_scan
from neurostep.kernels.linear_scan import linear_scan
from neurostep.kernels.selective_scan import selective_scan
from neurostep.kernels.wkv import wkv
from neurostep.neuro.neurons import LIF
from neurostep.neuro.spikegpt import SpikeGPT
from neurostep.ssm.mamba import MambaLM

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
L = 16  # divisible by 2 and 4


def excess(got: torch.Tensor, want: torch.Tensor, tol: float) -> float:
    """Largest ``|got - want| - tol * |want|`` (<= tol means allclose with rtol = atol = tol)."""
    got, want = got.detach().double(), want.detach().double()
    if got.shape != want.shape:
        raise AssertionError(f"shape {tuple(got.shape)} != {tuple(want.shape)}")
    if not bool(torch.isfinite(got).all()) or not bool(torch.isfinite(want).all()):
        return float("inf")
    return float(((got - want).abs() - tol * want.abs()).max())


def leaves(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().requires_grad_(v.is_floating_point()) for k, v in tensors.items()}


class Checker:
    def __init__(self, sp: SequenceParallel, dtype: torch.dtype, only: tuple[str, ...] = (), prefix: str = "") -> None:
        self.sp, self.dtype, self.tol = sp, dtype, TOL[dtype]
        self.only, self.prefix = only, prefix  # run only these checks (all when empty); name results with prefix
        self.results: dict[str, float] = {}
        self.log: list[str] = []

    def op(self, name: str, run_ref: Callable, run_sp: Callable, inputs: dict[str, torch.Tensor],
           seq: dict[str, int], init: tuple[str, ...] = ()) -> None:
        """``seq``: input name -> its time dim (split over ranks); others are shared parameters, except
        ``init`` (initial states: given on rank 0 only). ``run_*(inputs) -> (out, final_parts)``; the loss is
        ``sum(out * W)`` plus ``sum(final * V)`` of the whole sequence's final state (on the last rank)."""
        sp, tol = self.sp, self.tol
        ref_in = leaves(inputs)
        out_ref, fin_ref = run_ref(ref_in)
        gen = torch.Generator().manual_seed(7)
        w_out = torch.randn(out_ref.shape, generator=gen, dtype=out_ref.dtype)
        w_fin = [torch.randn(f.shape, generator=gen, dtype=f.dtype) for f in fin_ref]
        loss = (out_ref * w_out).sum() + sum((f * w).sum() for f, w in zip(fin_ref, w_fin))
        loss.backward()

        local = {}
        for k, v in inputs.items():
            if k in seq:
                v = sp.split(v, seq[k])
            elif k in init and sp.rank > 0:
                continue
            local[k] = v
        sp_in = leaves(local)
        out, fin = run_sp(sp_in)
        out_dim = seq["__out__"]
        loss = (out * sp.split(w_out, out_dim)).sum()
        if sp.rank == sp.size - 1:
            loss = loss + sum((f * w).sum() for f, w in zip(fin, w_fin))
        loss.backward()
        worst = excess(out, sp.split(out_ref, out_dim), tol)
        if sp.rank == sp.size - 1:
            worst = max([worst, *(excess(f, r, tol) for f, r in zip(fin, fin_ref))])
        for k, v in sp_in.items():
            if v.grad is None and ref_in[k].grad is None:
                continue
            if v.grad is None:
                raise AssertionError(f"{name}: no gradient for {k} on rank {sp.rank}")
            grad = v.grad
            want = ref_in[k].grad
            if k in seq:
                want = sp.split(want, seq[k])
            elif k not in init:  # a shared parameter: each rank holds its chunk's part of the gradient
                grad = grad.clone()
                dist.all_reduce(grad, group=sp.group)
            worst = max(worst, excess(grad, want, tol))
        self.done(name, worst)

    def model(self, name: str, model: nn.Module, run_sp: Callable, idx: torch.Tensor,
              fp32_params: str | None = None) -> None:
        """Logits and every parameter gradient of ``model`` on a sequence split over the group.

        Parameters whose name contains ``fp32_params`` belong to layers that compute in float32 whatever
        the model's dtype (RMSNorm): their gradients, sums over tokens, are compared at float32's tolerance."""
        sp, tol = self.sp, self.tol
        gen = torch.Generator().manual_seed(11)
        logits = model(idx)
        w = torch.randn(logits.shape, generator=gen, dtype=logits.dtype)
        (logits * w).sum().backward()
        ref = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        local = run_sp(sp.split(idx, 1))
        (local * sp.split(w, 1)).sum().backward()
        sp.all_reduce_gradients(model)
        worst = excess(local, sp.split(logits, 1), tol)
        for n, p in model.named_parameters():
            if n in ref:
                fp32 = fp32_params is not None and fp32_params in n
                worst = max(worst, excess(p.grad, ref[n], max(tol, TOL[torch.float32]) if fp32 else tol))
        model.zero_grad(set_to_none=True)
        self.done(name, worst)

    def done(self, name: str, worst: float) -> None:
        key = f"{self.prefix}{name}/{str(self.dtype)[6:]}"
        self.results[key] = worst
        self.log.append(f"{time.time() - float(os.environ.get('SP_WORKER_T0', '0')):7.2f}s {key} {worst:.3g}")


def op_checks(c: Checker) -> None:
    sp, dt = c.sp, c.dtype
    g = torch.Generator().manual_seed(0)

    def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dt)

    # selective scan: per-step B, C, D, z, delta bias, softplus, an initial state
    Bsz, Dm, N = 2, 3, 4
    ss = dict(u=rnd(Bsz, Dm, L), delta=rnd(Bsz, Dm, L, scale=0.5), A=-torch.rand(Dm, N, generator=g).to(dt) - 0.2,
              B=rnd(Bsz, N, L), C=rnd(Bsz, N, L), D=rnd(Dm), z=rnd(Bsz, Dm, L), delta_bias=rnd(Dm, scale=0.3),
              h0=rnd(Bsz, Dm, N))

    def ss_run(scan: Callable) -> Callable:
        def run(t):
            out, fin = scan(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["delta_bias"], True,
                            initial_state=t.get("h0"), output_final_state=True)
            return out, (fin,)
        return run

    c.op("selective_scan", ss_run(selective_scan), ss_run(sp.selective_scan), ss,
         dict(u=2, delta=2, B=2, C=2, z=2, __out__=2), ("h0",))
    # grouped B, C (B, G, N, L) and no initial state
    ssg = dict(u=rnd(Bsz, 4, L), delta=rnd(Bsz, 4, L), A=-torch.rand(4, N, generator=g).to(dt) - 0.1,
               B=rnd(Bsz, 2, N, L), C=rnd(Bsz, 2, N, L))

    def ssg_run(scan: Callable) -> Callable:
        def run(t):
            out, fin = scan(t["u"], t["delta"], t["A"], t["B"], t["C"], delta_softplus=True, output_final_state=True)
            return out, (fin,)
        return run

    c.op("selective_scan_grouped", ssg_run(selective_scan), ssg_run(sp.selective_scan), ssg,
         dict(u=2, delta=2, B=3, C=3, __out__=2))

    # linear scan with lanes (3, 2) and an initial state
    ls = dict(a=torch.rand(Bsz, L, 3, 2, generator=g).to(dt) * 0.9 + 0.05, b=rnd(Bsz, L, 3, 2), h0=rnd(Bsz, 3, 2))

    def ls_run(scan: Callable) -> Callable:
        def run(t):
            h, fin = scan(t["a"], t["b"], t.get("h0"), output_final_state=True)
            return h, (fin,)
        return run

    c.op("linear_scan", ls_run(linear_scan), ls_run(sp.linear_scan), ls, dict(a=1, b=1, __out__=1), ("h0",))

    # chunked decayed linear attention: per-step decay, and one constant decay per head
    H, K, V = 2, 3, 4
    dla = dict(q=rnd(Bsz, L, H, K), k=rnd(Bsz, L, H, K), v=rnd(Bsz, L, H, V),
               g=-torch.rand(Bsz, L, H, generator=g).to(dt) * 0.5, h0=rnd(Bsz, H, K, V))

    def dla_run(op: Callable, chunk: int | None = None) -> Callable:
        def run(t):
            o, fin = op(t["q"], t["k"], t["v"], t["g"], initial_state=t.get("h0"), output_final_state=True,
                        chunk_size=chunk)
            return o, (fin,)
        return run

    c.op("decayed_linear_attention", dla_run(decayed_linear_attention), dla_run(sp.decayed_linear_attention), dla,
         dict(q=1, k=1, v=1, g=1, __out__=1), ("h0",))
    dlah = {**dla, "g": -torch.rand(H, generator=g).to(dt)}
    c.op("decayed_linear_attention_per_head", dla_run(decayed_linear_attention, 2),
         dla_run(sp.decayed_linear_attention, 2), dlah, dict(q=1, k=1, v=1, __out__=1), ("h0",))
    # values scaled per step and head inside the op (Mamba-2's v = x, v_scale = dt)
    dlaw = {**dla, "w": torch.rand(Bsz, L, H, generator=g).to(dt) + 0.1}

    def dlaw_run(op: Callable) -> Callable:
        def run(t):
            o, fin = op(t["q"], t["k"], t["v"], t["g"], v_scale=t["w"], initial_state=t.get("h0"),
                        output_final_state=True)
            return o, (fin,)
        return run

    c.op("decayed_linear_attention_v_scale", dlaw_run(decayed_linear_attention),
         dlaw_run(sp.decayed_linear_attention), dlaw, dict(q=1, k=1, v=1, g=1, w=1, __out__=1), ("h0",))
    # one group of q and k shared by both heads (Mamba-2's ngroups = 1)
    dlag = {**dla, "q": rnd(Bsz, L, 1, K), "k": rnd(Bsz, L, 1, K)}
    c.op("decayed_linear_attention_grouped", dla_run(decayed_linear_attention), dla_run(sp.decayed_linear_attention),
         dlag, dict(q=1, k=1, v=1, g=1, __out__=1), ("h0",))

    # WKV with an initial state from an earlier stretch of text
    C = 5
    kv = dict(w=rnd(C, scale=0.5), u=rnd(C, scale=0.5), k=rnd(Bsz, L, C), v=rnd(Bsz, L, C))
    with torch.no_grad():
        _, s0 = wkv(kv["w"], kv["u"], rnd(Bsz, 3, C), rnd(Bsz, 3, C), output_final_state=True)
    kv.update(aa=s0.aa, bb=s0.bb, pp=s0.pp)

    def wkv_run(op: Callable, with_state: bool) -> Callable:
        def run(t):
            state = (t["aa"], t["bb"], t["pp"]) if "aa" in t else None
            y, fin = op(t["w"], t["u"], t["k"], t["v"], state if with_state else None, output_final_state=True)
            return y, (fin.aa * torch.exp(fin.pp), fin.bb * torch.exp(fin.pp))
        return run

    c.op("wkv", wkv_run(wkv, True), wkv_run(sp.wkv, True), kv, dict(k=1, v=1, __out__=1), ("aa", "bb", "pp"))
    fresh = {k: kv[k] for k in ("w", "u", "k", "v")}
    c.op("wkv_fresh", wkv_run(wkv, False), wkv_run(sp.wkv, False), fresh, dict(k=1, v=1, __out__=1))

    # LIF: learnable tau_inv and threshold, an initial membrane; and the adaptive threshold
    lif = dict(x=rnd(L, Bsz, 3, scale=1.5) + 0.6, tau=torch.tensor(0.4, dtype=dt), vth=torch.tensor(0.8, dtype=dt),
               v0=rnd(Bsz, 3, scale=0.3))

    def lif_run(op: Callable, **kw) -> Callable:
        def run(t):
            state = LIFState(t["v0"]) if "v0" in t else None
            (s, v_seq), fin = op(t["x"], state, tau_inv=t["tau"], v_threshold=t["vth"], return_v_seq=True,
                                 output_final_state=True, **kw)
            return torch.cat([s, v_seq], dim=-1), (fin.v,)
        return run

    c.op("lif_scan", lif_run(lif_scan), lif_run(sp.lif_scan), lif, dict(x=0, __out__=0), ("v0",))
    c.op("lif_scan_adaptive_soft", lif_run(lif_scan, adapt_beta=0.3, adapt_rho=0.8, v_reset=None),
         lif_run(sp.lif_scan, adapt_beta=0.3, adapt_rho=0.8, v_reset=None), {k: lif[k] for k in ("x", "tau", "vth")},
         dict(x=0, __out__=0))

    # causal conv: width 4 with an initial state, width 7 (wider than a chunk when P = 4)
    for width in (4, 7):
        cv = dict(x=rnd(Bsz, 3, L), w=rnd(3, width), b=rnd(3), h0=rnd(Bsz, 3, width - 1))

        def cv_run(op: Callable) -> Callable:
            def run(t):
                out, fin = op(t["x"], t["w"], t["b"], "silu", initial_state=t.get("h0"), output_final_state=True)
                return out, (fin,)
            return run

        c.op(f"causal_conv1d_w{width}", cv_run(causal_conv1d), cv_run(sp.causal_conv1d), cv, dict(x=2, __out__=2),
             ("h0",))

    # causal conv on channels-last input (the transpose of a token-major (B, L, D) block, as Mamba-2 passes it)
    cvl = dict(x=rnd(Bsz, L, 3), w=rnd(3, 4), b=rnd(3), h0=rnd(Bsz, 3, 3))

    def cvl_run(op: Callable) -> Callable:
        def run(t):
            out, fin = op(t["x"].transpose(1, 2), t["w"], t["b"], "silu", initial_state=t.get("h0"),
                          output_final_state=True)
            return out, (fin,)
        return run

    c.op("causal_conv1d_w4_channels_last", cvl_run(causal_conv1d), cvl_run(sp.causal_conv1d), cvl,
         dict(x=1, __out__=2), ("h0",))

    # ring self-attention against softmax attention on the whole sequence
    att = dict(q=rnd(Bsz, 2, L, 4), k=rnd(Bsz, 2, L, 4), v=rnd(Bsz, 2, L, 3))
    for causal in (True, False):
        c.op(f"ring_attention_causal{int(causal)}",
             lambda t, causal=causal: (F.scaled_dot_product_attention(t["q"], t["k"], t["v"], is_causal=causal), ()),
             lambda t, causal=causal: (sp.ring_attention(t["q"], t["k"], t["v"], causal=causal), ()),
             att, dict(q=2, k=2, v=2, __out__=2))


def model_checks(c: Checker) -> None:
    sp, dt = c.sp, c.dtype
    torch.manual_seed(1)
    idx = torch.randint(0, 30, (2, L))
    mamba = MambaLM(30, d_model=16, n_layer=2, d_state=4, d_conv=4, residual_in_fp32=False).to(dt)
    c.model("mamba_lm", mamba, lambda ids: _in(sp, mamba, ids), idx, fp32_params="norm")
    torch.manual_seed(2)
    gpt = SpikeGPT(30, 16, 2, init="threshold").to(dt)
    c.model("spikegpt", gpt, lambda ids: spikegpt_scan(sp, gpt, ids), idx)
    # a LIF network on (T, B, C): linear -> LIF -> linear -> LIF, time dim 0; input ids are unused here
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(5, 8), LIF(tau=2.0), nn.Linear(8, 4), LIF(tau=1.5, v_reset=None)).to(dt)
    x = torch.randn(L, 3, 5, dtype=dt) * 2

    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, ids: torch.Tensor) -> torch.Tensor:  # ids: (1, T) positions into x
            return self.net(x[ids[0]]).transpose(0, 1)

    wrapped = Wrapped()
    pos = torch.arange(L)[None]
    c.model("lif_network", wrapped, lambda ids: _in(sp, wrapped, ids), pos)


def _in(sp: SequenceParallel, model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with sp:
        return model(ids)


def ddp_check(results: dict[str, float]) -> None:
    """Data parallel over 2 x sequence parallel over 2: gradients equal one process on the whole batch."""
    sp, dp_group = init_sequence_parallel(data_parallel=2)
    dp_rank = dist.get_rank() // sp.size
    torch.manual_seed(5)
    model = MambaLM(30, d_model=16, n_layer=2, d_state=4, residual_in_fp32=False).double()
    idx = torch.randint(0, 30, (2, L))
    w = torch.randn(2, L, model.vocab_size, dtype=torch.float64)
    (model(idx) * w).sum().div(2).backward()  # DDP averages over the 2 replicas
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    ddp = DistributedDataParallel(model, process_group=dp_group)
    rows = slice(dp_rank, dp_rank + 1)
    with sp:
        logits = ddp(sp.split(idx[rows], 1))
    (logits * sp.split(w[rows], 1)).sum().backward()
    sp.all_reduce_gradients(model)
    # point-to-point exchanges inside a subgroup address their peers by global rank
    sub = Checker(sp, torch.float64, only=("lif_scan", "ring_attention_causal1", "causal_conv1d_w7"),
                  prefix="subgroup_")
    op_checks(sub)
    results.update(sub.results)
    results["ddp_mamba_lm/float64"] = max(excess(p.grad, ref[n], 1e-5 if "norm" in n else 1e-10)
                                          for n, p in model.named_parameters())


def traffic_checks(sp: SequenceParallel, results: dict[str, float]) -> None:
    """A two-pass op sends its state-sized summary whatever the chunk length; ring attention sends its keys and
    values to each other rank. Recorded as 0.0 when the forward bytes are exactly those."""
    g = torch.Generator().manual_seed(3)
    ok_scan, ok_ring = True, True
    for n in (4, 32):
        u, d = torch.randn(1, 3, n, generator=g), torch.randn(1, 3, n, generator=g)
        A, B, C = -torch.rand(3, 5, generator=g), torch.randn(1, 5, n, generator=g), torch.randn(1, 5, n, generator=g)
        sp.stats.reset()
        sp.selective_scan(u, d, A, B, C)
        ok_scan &= sp.stats.bytes_sent["forward"] == (sp.size - 1) * 2 * (1 * 3 * 5) * 4  # final state and decay
        q, k, v = (torch.randn(1, 2, n, 4, generator=g) for _ in range(3))
        sp.stats.reset()
        sp.ring_attention(q, k, v)
        ok_ring &= sp.stats.bytes_sent["forward"] == (sp.size - 1) * (k.numel() + v.numel()) * 4
    results["traffic_two_pass_state_sized"] = 0.0 if ok_scan else 1.0
    results["traffic_ring_activation_sized"] = 0.0 if ok_ring else 1.0


def error_checks(sp: SequenceParallel, results: dict[str, float]) -> None:
    """Bad input raises before any exchange, so ranks that raise never leave the others waiting."""
    def raises(fn: Callable, kind: type[Exception], text: str) -> float:
        try:
            fn()
        except kind as e:
            return 0.0 if text in str(e) else 1.0
        return 1.0

    results["error_split_length"] = raises(lambda: sp.split(torch.zeros(2, L + 1), 1), ValueError, "multiple")
    if sp.rank > 0:
        a = torch.rand(1, 4, 2)
        results["error_state_after_rank0"] = raises(
            lambda: sp.linear_scan(a, a, torch.zeros(1, 2)), ValueError, "read on rank 0")
        results["error_wkv_state_after_rank0"] = raises(
            lambda: sp.wkv(torch.zeros(2), torch.zeros(2), a, a, (torch.ones(1, 2),) * 3), ValueError, "rank 0")
    solo = dist.new_group([0])
    if dist.get_rank() != 0:
        results["error_not_in_group"] = raises(lambda: SequenceParallel(solo), ValueError, "not a member")


def main() -> None:
    out_dir = sys.argv[1]
    log = [f"{time.time() - float(os.environ.get('SP_WORKER_T0', '0')):7.2f}s start"]
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    results: dict[str, float] = {}
    log.append(f"{time.time() - float(os.environ.get('SP_WORKER_T0', '0')):7.2f}s initialised")
    try:
        sp = SequenceParallel()
        for dtype in (torch.float32, torch.float64):
            c = Checker(sp, dtype)
            op_checks(c)
            model_checks(c)
            results.update(c.results)
            log.extend(c.log)
        traffic_checks(sp, results)
        error_checks(sp, results)
        log.append(f"{time.time() - float(os.environ.get('SP_WORKER_T0', '0')):7.2f}s errors")
        if dist.get_world_size() == 4:
            ddp_check(results)
            log.append(f"{time.time() - float(os.environ.get('SP_WORKER_T0', '0')):7.2f}s ddp")
        results["bytes_forward"] = sp.stats.bytes_sent["forward"]
    except Exception:
        results["exception"] = traceback.format_exc()
        raise
    finally:
        with open(os.path.join(out_dir, f"rank{dist.get_rank()}.json"), "w") as f:
            json.dump({"tol": {"float32": TOL[torch.float32], "float64": TOL[torch.float64]}, "results": results,
                       "log": log}, f)
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
