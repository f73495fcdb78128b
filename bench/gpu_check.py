"""Serving on onnxruntime's CUDA provider against the CPU and against PyTorch on the same math.

    python bench/gpu_check.py                          # 1M items, d = 64, K = 4, top 50 (a GPU machine)
    python bench/gpu_check.py --items 3000 --users 64  # a quick run (what the tests do, CPU only)

In one run on one machine it prints:
1. tower users/s: CPU at its run size, CUDA at fp32 and TF32 over run sizes (users per run);
2. top-n users/s (Eq. 3 over every item, history excluded, top n): the CPU's graph ('blocked'),
   and on CUDA the default ('pruned', users per run from the memory budget) next to the
   alternatives measured to choose it (the blocked graph, other chunk and block sizes, run sizes),
   at fp32 and TF32;
3. when PyTorch with CUDA is importable, the same math in PyTorch (bench/torch_topn.py: three
   formulations, several run sizes, fp32 and TF32), every figure including the same host-device
   copies as onnxruntime's; the fastest of each precision is the anchor;
4. parity, CUDA fp32 against the CPU: interests and top-n scores within PARITY, interest masks
   equal, top-n ids identical apart from exact ties (ids that differ must score the same within
   PARITY in float64); TF32's recall@n against fp32 and its largest score difference;
5. with PyTorch, each default run's CUDA kernels by time (torch.profiler over onnxruntime's run:
   the per-op profile docs/results.md quotes);
and last, for scripts:

    gpu: topn fp32 users/s=X torch-fp32=Y ratio=R tf32 users/s=Z torch-tf32=W ratio=S parity=PASS|FAIL

Without a CUDA provider (onnxruntime-gpu and the CUDA libraries its build names: `python -c "from
mindref.export.runtime import cuda_needs; print(cuda_needs())"`) the CUDA parts are skipped with a
line saying so. Figures are medians of 3 timed passes after a warm-up pass.
"""
from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_topn import FORMULATIONS, TorchTopN  # noqa: E402

from mindref.export.arrays import npy_bytes, npy_data_offset  # noqa: E402
from mindref.export.providers import CUDA_BUDGET  # noqa: E402
from mindref.export.runtime import TowerSession  # noqa: E402
from mindref.export.topn import CHUNK, TopNSession, block_views, build_topn, layout_for  # noqa: E402
from mindref.export.tower import build_tower  # noqa: E402
from mindref.model import MINDConfig, catalog, init_params  # noqa: E402

PARITY = 1e-5


def median_rate(fn, users: int, repeats: int = 3) -> float:
    """users/s: the median of `repeats` timed passes after one warm-up pass."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return users / sorted(times)[len(times) // 2]


class Setup:
    """A model of `items` items (init parameters: speed and parity do not depend on training), its
    catalogue E written once as item_vectors.npy (the top-n graphs point into it, as in a bundle)."""

    def __init__(self, items: int, folder: Path, max_len: int = 50, seed: int = 0):
        self.cfg = MINDConfig(num_items=items + 1, field_sizes=(21,), dim=64, K=4, hidden=(64,),
                              max_len=max_len, seed=seed)
        self.params = init_params(self.cfg)
        self.fields = (np.r_[0, 1 + np.arange(items) % 20].astype(np.int64)[:, None],)
        self.E, _ = catalog(self.params, self.fields, self.cfg.num_items)
        npy = npy_bytes(self.E)
        (folder / "item_vectors.npy").write_bytes(npy)
        self.folder, self.offset = folder, npy_data_offset(npy)
        self.tower_graph = build_tower(self.params, self.cfg, self.fields).SerializeToString()

    def tower(self, provider: str, precision: str = "fp32", users: int | None = None) -> TowerSession:
        return TowerSession(self.tower_graph, self.cfg, self.fields, provider, chunk=users,
                            precision=precision)

    def topn(self, provider: str, precision: str = "fp32", users: int | None = None,
             budget: int = CUDA_BUDGET, rehearse: bool = False, **layout) -> TopNSession:
        model = build_topn(self.E, self.cfg.K, external_above=0, npy_offset=self.offset, **layout)
        session = TopNSession(model.SerializeToString(), self.cfg.num_items, provider, users=users,
                              precision=precision, budget=budget, shared=block_views(self.E, model),
                              folder=str(self.folder))
        if rehearse:  # the CUDA code paths (run sizing, IOBinding) on a CPU session
            session.provider = "cuda"
        return session

    def requests(self, users: int, seed: int = 1) -> np.ndarray:
        rng = np.random.default_rng(seed)
        L = self.cfg.max_len
        lengths = rng.integers(1, L + 1, users)
        hist = rng.integers(1, self.cfg.num_items, (users, L))
        hist[np.arange(L)[None, :] >= lengths[:, None]] = 0
        return hist


def exact_scores(E: np.ndarray, V_u: np.ndarray, mask: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Eq. (3) in float64 for items [B, n] (NumPy: the arbiter of ties)."""
    s = np.einsum("bnd,bkd->bnk", E[items].astype(np.float64), V_u.astype(np.float64))
    return np.where(mask[:, None, :], s, -np.inf).max(2)


def topn_parity(E, V_u, mask, want, got) -> tuple[float, int, bool]:
    """(max |score difference| (relative above 1), rows whose ids differ, ids identical apart from
    exact ties): where the ids differ, both lists' float64 scores must agree within PARITY."""
    (w_items, w_scores, _), (g_items, g_scores, _) = want, got
    finite = np.isfinite(w_scores) & np.isfinite(g_scores)
    diff = np.abs(w_scores - g_scores)[finite] / np.maximum(1, np.abs(w_scores[finite]))
    rows = (w_items != g_items).any(1)
    ties = True
    if rows.any():
        a = exact_scores(E, V_u[rows], mask[rows], w_items[rows])
        b = exact_scores(E, V_u[rows], mask[rows], g_items[rows])
        ok = np.isfinite(a) & np.isfinite(b)
        ties = bool((np.abs(a - b)[ok] <= PARITY * np.maximum(1, np.abs(a[ok]))).all())
    return float(diff.max(initial=0.0)), int(rows.sum()), ties


def recall(want: np.ndarray, got: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(want, got)]))


def torch_cuda():
    """PyTorch with a CUDA device, or None."""
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def kernel_profile(torch, fn, trace: Path | None = None, top: int = 8) -> list[tuple[str, float, float]]:
    """(kernel name, ms, share) of the CUDA kernels one call of fn ran, longest first
    (torch.profiler's CUPTI trace: it sees every kernel of the process, onnxruntime's too).
    trace: also write the Chrome trace there."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    if trace is not None:
        prof.export_chrome_trace(str(trace))
    times = {}
    for e in prof.events():
        if str(getattr(e, "device_type", "")).endswith("CUDA"):
            times[e.name] = times.get(e.name, 0.0) + e.time_range.elapsed_us() / 1e3
    total = sum(times.values()) or 1.0
    return [(k, v, v / total) for k, v in sorted(times.items(), key=lambda kv: -kv[1])[:top]]


def profile_line(torch, fn, trace: Path | None) -> str:
    try:
        rows = kernel_profile(torch, fn, trace)
    except Exception as err:  # the profiler is a view into the run, never a reason to stop it
        return f"kernels: not profiled ({str(err).splitlines()[0][:80]})"
    return "kernels: " + ("; ".join(f"{name[:70]} {ms:.2f} ms ({share:.0%})" for name, ms, share in rows)
                          or "none recorded")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=8192, help="users per timed pass on CUDA")
    ap.add_argument("--cpu-users", type=int, default=256, help="users per timed pass of the CPU top-n")
    ap.add_argument("--parity-users", type=int, default=512)
    ap.add_argument("-n", type=int, default=50)
    ap.add_argument("--budget", type=float, default=CUDA_BUDGET / 2**30, help="CUDA run budget, GiB")
    ap.add_argument("--small", type=int, nargs="*", default=[100_000, 300_000],
                    help="also catalogues of these many items: where the pruned form stops paying")
    ap.add_argument("--skip", nargs="*", default=(), choices=("tower", "torch"),
                    help="leave out the tower rows or the PyTorch rows (a shorter run)")
    ap.add_argument("--trace", type=Path, help="a folder for the profiled runs' Chrome traces")
    ap.add_argument("--rehearse", action="store_true", help=argparse.SUPPRESS)  # the CUDA rows on the CPU
    args = ap.parse_args(argv)
    torch = torch_cuda()  # first: its CUDA libraries loaded, onnxruntime finds them in the process
    if args.rehearse:  # tests: every CUDA code path of this script, run on the CPU provider and device
        try:
            import torch
        except ImportError:
            torch = None
    import onnxruntime as ort
    gpu = "cpu" if args.rehearse else "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        verdict = run(args, Setup(args.items, Path(tmp)), torch, ort, gpu)
    for items in args.small if verdict != "SKIP" else ():
        with tempfile.TemporaryDirectory() as tmp:
            small_catalogue(args, Setup(items, Path(tmp)), torch, gpu)
    print(LAST_LINE[0])


LAST_LINE = ["gpu: not run"]


def small_catalogue(args, setup: Setup, torch, gpu: str) -> None:
    """The forms at a smaller catalogue: the pruned form re-scores m chunks of `chunk` items
    whatever the catalogue's size, the blocked form with one block scores every item once."""
    check = Check(args, setup, torch, gpu)
    V = setup.cfg.num_items
    print(f"\ntop-n at {V - 1:,} items (fp32; default: what mindref runs on CUDA at this size)")
    chosen = layout_for("cuda", V)
    for layout, users in (({"form": "pruned", "chunk": CHUNK}, None), ({"form": "blocked", "block": V}, None),
                          ({"form": "blocked"}, 1024)):
        check.cuda_topn("fp32", layout, users, default=users is None and layout == chosen)


class Check:
    """One run of the check: the requests, the CPU's answers, and what was measured."""

    def __init__(self, args, setup: Setup, torch, gpu: str):
        self.args, self.setup, self.torch, self.gpu = args, setup, torch, gpu
        self.n, self.budget, self.U, self.P = args.n, int(args.budget * 2**30), args.users, args.parity_users
        self.hist = setup.requests(max(args.users, args.parity_users, args.cpu_users))
        self.out = setup.tower("cpu").run(self.hist)  # interests, masks: the top-n's inputs
        self.towers, self.results, self.rates, self.anchors = {}, {}, {}, {}

    def free_memory(self) -> int:
        """The device's free bytes (PyTorch's view of the whole device: onnxruntime's arena too)."""
        return self.torch.cuda.mem_get_info()[0] if self.torch is not None and self.gpu == "cuda" else 0

    def feeds(self, users: int) -> tuple:
        return self.out.interests[:users], self.out.mask[:users], self.hist[:users], self.n

    def tower_rows(self, cuda: bool, timed: bool = True) -> None:
        """Users/s of the tower (timed), and its CUDA outputs for the parity check."""
        if timed:
            print("\ntower          precision  users/run     users/s")
            cpu = self.setup.tower("cpu")
            U = min(len(self.hist), 4096)
            rate = median_rate(lambda: cpu.run(self.hist[:U]), U)
            print(f"{'cpu':<15}{'fp32':<11}{cpu.chunk:>9}{rate:>12,.0f}  default")
        for precision in ("fp32", "tf32") if cuda else ():
            for users in (4096, 65536, None) if timed else (None,):
                tower = self.setup.tower(self.gpu, precision, users)
                if timed:
                    rate = median_rate(lambda t=tower: t.run(self.hist), len(self.hist))
                    print(f"{'cuda':<15}{precision:<11}{tower.chunk:>9}{rate:>12,.0f}"
                          + ("  default" if users is None else ""))
                if users is None:
                    self.towers[precision] = tower.run(self.hist[:self.P])

    def cpu_topn(self) -> None:
        C = self.args.cpu_users
        print("\ntop-n          precision  form      block    chunk users/run     users/s   GiB held")
        cpu = self.setup.topn("cpu")
        self.want = cpu.run(*self.feeds(self.P))
        rate = median_rate(lambda: cpu.run(*self.feeds(C)), C)
        print(f"{'cpu':<15}{'fp32':<11}{'blocked':<10}{cpu.layout['block']:>7}{'-':>7}"
              f"{cpu.users_per_run(self.n, self.setup.cfg.max_len):>10}{rate:>12,.0f}  default")

    def cuda_topn(self, precision: str, layout: dict, users: int | None, default: bool | None = None) -> None:
        """One configuration's users/s and held memory; default: the configuration mindref runs."""
        gc.collect()
        if default is None:
            default = users is None and layout == {"form": "pruned"}
        free = self.free_memory()
        try:
            s = self.setup.topn(self.gpu, precision, users, self.budget, self.gpu == "cpu", **layout)
            rate = median_rate(lambda: s.run(*self.feeds(self.U)), self.U)
        except Exception as err:  # a configuration the runtime refuses is a finding, not the end of the run
            print(f"{'cuda':<15}{precision:<11}{layout['form']:<10} failed: {str(err).splitlines()[0][:90]}")
            return
        held = (free - self.free_memory()) / 2**30  # onnxruntime's arena keeps its peak: the run's memory
        pruned = s.layout["form"] == "pruned"
        block = self.setup.cfg.num_items // s.layout["chunk"] if pruned else s.layout["block"]
        chunk = s.layout["chunk"] if pruned else "-"
        print(f"{'cuda':<15}{precision:<11}{s.layout['form']:<10}{block:>7}{chunk:>7}"
              f"{s.users_per_run(self.n, self.setup.cfg.max_len):>10}{rate:>12,.0f}{held:>11.1f}"
              + ("  default" if default else ""))
        key = (precision, layout["form"], default)
        if default or key not in self.results:
            self.results[key] = s.run(*self.feeds(self.P))
        if default:
            self.rates[precision] = rate
            if self.torch is not None and self.gpu == "cuda":
                trace = self.args.trace and self.args.trace / f"ort-{precision}.json"
                print("    " + profile_line(self.torch, lambda: s.run(*self.feeds(self.U)), trace))

    def torch_rows(self) -> None:
        torch, gpu = self.torch, self.gpu
        print("\nPyTorch        precision  formulation  users/run     users/s")
        for precision in ("fp32", "tf32"):
            torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
            for users in (512, 1024, 2048):
                ref = TorchTopN(torch, self.setup.E, gpu, users)
                for form in FORMULATIONS:
                    try:
                        rate = median_rate(lambda f=form, r=ref: r.run(f, *self.feeds(self.U)), self.U)
                    except Exception as err:  # e.g. out of memory at the largest run
                        print(f"{'torch':<15}{precision:<11}{form:<13}{users:>9}  failed: {str(err)[:60]}")
                        continue
                    finally:
                        if gpu == "cuda":
                            torch.cuda.empty_cache()
                    print(f"{'torch':<15}{precision:<11}{form:<13}{users:>9}{rate:>12,.0f}")
                    self.anchors[precision] = max(self.anchors.get(precision, 0.0), rate)
        torch.backends.cuda.matmul.allow_tf32 = False
        if gpu == "cuda":
            ref = TorchTopN(torch, self.setup.E, gpu, 1024)
            for form in FORMULATIONS:
                trace = self.args.trace and self.args.trace / f"torch-{form}.json"
                line = profile_line(torch, lambda f=form: ref.run(f, *self.feeds(self.U)), trace)
                print(f"    {form} fp32 {line}")

    def parity(self) -> str:
        P, E, n = self.P, self.setup.E, self.n
        V_u, mask = self.out.interests[:P], self.out.mask[:P]
        print(f"\nparity against the CPU (fp32), {P} users, bar {PARITY}")
        d_int = float(np.abs(self.towers["fp32"].interests - V_u).max())
        masks = bool((self.towers["fp32"].mask == mask).all())
        ok = d_int <= PARITY and masks
        print(f"tower fp32: interests max |difference| {d_int:.2e}, masks equal {masks}")
        for form in ("pruned", "blocked"):
            got = self.results.get(("fp32", form, form == "pruned"))
            if got is None:
                continue
            d, rows, ties = topn_parity(E, V_u, mask, self.want, got)
            ok &= (d <= PARITY and ties) if form == "pruned" else True
            print(f"top-n fp32 {form}: scores max |difference| {d:.2e}, {rows} of {P} rows with ids in "
                  f"another order, ids identical apart from exact ties: {ties}")
        tf = self.results.get(("tf32", "pruned", True))
        if tf is not None and "tf32" in self.towers:
            d, _, _ = topn_parity(E, V_u, mask, self.want, tf)
            d_int = float(np.abs(self.towers["tf32"].interests - V_u).max())
            print(f"tf32 (information): interests max |difference| {d_int:.2e}, top-{n} scores {d:.2e}, "
                  f"recall@{n} against fp32 {recall(self.want[0], tf[0]):.4f}")
        verdict = "PASS" if ok else "FAIL"
        print(f"parity: {verdict}")
        return verdict


CUDA_CONFIGS = [("fp32", {"form": "blocked"}, 1024), ("fp32", {"form": "pruned"}, None),
                *[("fp32", {"form": "pruned", "chunk": c}, None) for c in (16, 32, 64, 128) if c != CHUNK],
                *[("fp32", {"form": "pruned"}, u) for u in (1024, 2048, 4096)],
                ("tf32", {"form": "pruned"}, None), ("tf32", {"form": "pruned"}, 4096),
                ("tf32", {"form": "blocked"}, 1024)]


def run(args, setup: Setup, torch, ort, gpu: str = "cuda") -> str:
    cfg = setup.cfg
    print(f"gpu_check: {args.items:,} items, d = {cfg.dim}, K = {cfg.K}, top {args.n}, histories of "
          f"1..{cfg.max_len}; onnxruntime {ort.__version__} ({', '.join(ort.get_available_providers())})"
          + (f"; torch {torch.__version__}" if torch else "")
          + (f" on {torch.cuda.get_device_name()}" if torch and gpu == "cuda" else ""))
    try:
        setup.tower(gpu)
        cuda = True
    except RuntimeError as err:
        cuda = False
        print(f"cuda: not available here ({err}); the CUDA rows and the parity check are skipped")
    check = Check(args, setup, torch, gpu)
    check.tower_rows(cuda, "tower" not in args.skip)
    check.cpu_topn()
    for precision, layout, users in CUDA_CONFIGS if cuda else ():
        check.cuda_topn(precision, layout, users)
    if cuda and torch is not None and "torch" not in args.skip:
        check.torch_rows()
    verdict = check.parity() if cuda else "SKIP"
    fp, tf = check.rates.get("fp32", 0.0), check.rates.get("tf32", 0.0)
    ta, tb = check.anchors.get("fp32", 0.0), check.anchors.get("tf32", 0.0)
    LAST_LINE[0] = (f"gpu: topn fp32 users/s={fp:.0f} torch-fp32={ta:.0f} ratio={_ratio(fp, ta)} "
                    f"tf32 users/s={tf:.0f} torch-tf32={tb:.0f} ratio={_ratio(tf, tb)} parity={verdict}")
    return verdict


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if a and b else "-"


if __name__ == "__main__":
    main()
