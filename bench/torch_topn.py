"""The top-n retrieval's math in PyTorch: the anchor bench/gpu_check.py measures mindref's ONNX
graphs against (PyTorch is never a dependency of mindref).

Each formulation computes what export/topn.py computes: Eq. (3) over every item (masked
interests never win), the history and the padding id 0 excluded, the top n with the winning
interest, equal scores lower id first where the kernel allows. Inputs arrive as NumPy arrays and
results leave as NumPy arrays, so every formulation pays the same copies as onnxruntime's session.

    einsum-mask   S = einsum(bkd,vd->bkv), masked interests filled with -inf, amax over k, the
                  history scattered to -inf, topk (the formulation the issue first measured)
    einsum        the same with masked interests replaced by interest 0 (no pass over [B, K, V])
    pruned        chunk maxima of the scores (chunks of consecutive items, one amax), the top
                  m = n + H + 1 chunks re-scored, their top m merged and the history excluded
    pruned-grid   the same with the 'pruned' graph's chunks: chunk j = items j, G + j, 2 G + j, ..
                  (G = V // chunk), the items past the grid always re-scored
"""
from __future__ import annotations

import numpy as np

FORMULATIONS = ("einsum-mask", "einsum", "pruned", "pruned-grid")


class TorchTopN:
    """Top-n over item vectors E [V, d] on `device`, in runs of `users` users."""

    def __init__(self, torch, E: np.ndarray, device: str = "cuda", users: int = 1024, chunk: int = 64):
        self.torch, self.device, self.users, self.chunk = torch, device, users, chunk
        self.E = torch.from_numpy(np.ascontiguousarray(E, np.float32)).to(device)  # resident

    def run(self, form: str, V_u: np.ndarray, mask: np.ndarray, hist: np.ndarray, n: int):
        """items, scores, interest [B, n] as NumPy arrays (excluded slots: -inf)."""
        parts = [self._run(form, V_u[i:i + self.users], mask[i:i + self.users], hist[i:i + self.users], n)
                 for i in range(0, len(V_u), self.users)]
        return tuple(np.concatenate(x) for x in zip(*parts))

    def _run(self, form, V_u, mask, hist, n):
        t = self.torch
        V = t.from_numpy(np.ascontiguousarray(V_u, np.float32)).to(self.device)  # [B, K, d]
        m = t.from_numpy(np.ascontiguousarray(mask)).to(self.device)  # [B, K]
        h = t.from_numpy(np.ascontiguousarray(hist, np.int64)).to(self.device)  # [B, H]
        excluded = t.cat([h, t.zeros_like(h[:, :1])], 1)  # [B, H + 1]: the padding id too
        if form.startswith("pruned"):
            out = self._pruned(V, m, excluded, n, form == "pruned-grid")
        else:
            out = self._einsum(V, m, excluded, n, form == "einsum-mask")
        return tuple(x.cpu().numpy() for x in out)

    def _einsum(self, V, m, excluded, n, fill):
        t = self.torch
        if not fill:
            V = t.where(m[:, :, None], V, V[:, :1])  # masked interests take interest 0's vector
        S = t.einsum("bkd,vd->bkv", V, self.E)  # [B, K, V]
        if fill:
            S.masked_fill_(~m[:, :, None], float("-inf"))
        best = S.amax(1)  # [B, V]  Eq. (3)
        best.scatter_(1, excluded, float("-inf"))
        scores, items = best.topk(n, 1)  # [B, n]
        per_k = t.gather(S, 2, items[:, None, :].expand(-1, S.shape[1], -1))  # [B, K, n]
        per_k = per_k.masked_fill(~m[:, :, None], float("-inf"))
        return items, scores, per_k.argmax(1)

    def _pruned(self, V, m, excluded, n, grid: bool):
        t, c, E = self.torch, self.chunk, self.E
        V = t.where(m[:, :, None], V, V[:, :1])
        B, K, _ = V.shape
        S = t.einsum("bkd,vd->bkv", V, E)  # [B, K, V]
        G = len(E) // c  # chunks (grid) or whole chunks (consecutive)
        keep = min(n + excluded.shape[1], G)
        if grid:  # chunk j = items j, G + j, ..: [B, K, c, G] reduced over k and the group
            kept = S[:, :, :c * G].reshape(B, K, c, G).amax((1, 2)).topk(keep, 1).indices  # [B, m]
            rows = (kept[:, None, :] + G * t.arange(c, device=self.device)[None, :, None]).reshape(B, -1)
        else:
            kept = S[:, :, :c * G].reshape(B, K, G, c).amax((1, 3)).topk(keep, 1).indices
            rows = (kept[:, :, None] * c + t.arange(c, device=self.device)).reshape(B, -1)  # [B, m c]
        rest = t.arange(c * G, len(E), device=self.device).expand(B, -1)  # past the whole chunks
        rows = t.cat([rows, rest], 1)
        s = t.einsum("bjd,bkd->bjk", E[rows], V).masked_fill(~m[:, None, :], float("-inf"))
        best, win = s.max(2)  # [B, m c + rest]
        top, pos = best.topk(min(n + excluded.shape[1], best.shape[1]), 1)
        items = t.gather(rows, 1, pos)
        hit = (items[:, :, None] == excluded[:, None, :]).any(2)
        top = top.masked_fill(hit, float("-inf"))
        scores, where = top.topk(n, 1)
        return t.gather(items, 1, where), scores, t.gather(t.gather(win, 1, pos), 1, where)
