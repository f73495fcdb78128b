"""The catalogue of known mistakes: each layer's variants that public MIND code computes, which
mindref can compute too, so that the conformance kit can say which one a port matches.

A variant is one value per switch of its layer; the first value of every switch is mindref's
(the paper as docs/decisions.md reads it), unless the caller declares another as its convention.
`diagnose` tries every combination on probe inputs, fewest deviations first, and returns the
smallest combinations whose outputs reproduce the port's on every probe *within the check's own
error bound* (a looser tolerance would name a variant the check itself tells apart): "your
routing matches mindref with the softmax over behaviours and padded behaviours taking mass".
When no combination reproduces it but one removes most of the difference, it is named as a
partial explanation. Each deviation names its section of docs/decisions.md.

    routing          softmax axis; padding in or out of the softmax; the logit update (every
                     iteration, only the first two, from z instead of u); the squash inside;
                     softmax without max-subtraction (float32 overflow)
    squash           the misprint z / ||z||^2; an epsilon inside the square root
    attention        pow on a negative score (sign kept, |s|, no pow); masked capsules taking
                     mass; a hard argmax readout
    interest_count   floor(log2 n) vs floor(log2(1 + n)), floor(ln n), ceil(log2 n), no dynamic K
    sampled_softmax  cosine logits over a temperature; logQ correction ignored; accidental hits
                     kept; sum instead of mean

The same variants are the conventions a port may declare (`declared`, `compute`): the kit then
checks the port against that variant instead of mindref's choice.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from ..routing import interest_count
from ..sampled_softmax import candidate_softmax
from ..softmax import masked_softmax
from ..squash import squash_forward


class Choice(NamedTuple):
    value: str
    says: str  # the choice in words
    where: str  # docs/decisions.md section


def _switch(*choices: tuple[str, str, str]) -> tuple[Choice, ...]:
    return tuple(Choice(*c) for c in choices)


SWITCHES: dict[str, dict[str, tuple[Choice, ...]]] = {
    "routing": {
        "axis": _switch(("interests", "the routing softmax over interests", "decisions.md §1"),
                        ("behaviours", "the routing softmax over behaviours instead of interests",
                         "decisions.md §1")),
        "padding": _switch(("excluded", "padding outside the softmax", "decisions.md §2"),
                           ("mass", "padded behaviours (and masked capsules) take softmax mass, zeroed after "
                                    "the softmax", "decisions.md §2")),
        "updates": _switch(("every", "the logit update after each iteration but the last", "decisions.md §5"),
                           ("first-2", "the logit update only in the first two iterations (`i < 2`): "
                                       "iterations after the third change nothing", "decisions.md §5"),
                           ("none", "no logit update (b_ij never changes)", "decisions.md §5")),
        "update_from": _switch(("u", "the logit update from the squashed u", "decisions.md §5"),
                               ("z", "the logit update from z, before the squash", "decisions.md §5")),
        "squash": _switch(("paper", "the squash without epsilon", "decisions.md §7"),
                          ("1e-9", "an epsilon 1e-9 inside the squash's square root", "decisions.md §7"),
                          ("1e-8", "an epsilon 1e-8 inside the squash's square root", "decisions.md §7"),
                          ("misprint", "the misprinted squash z / (1 + ||z||^2)", "decisions.md §7")),
        "softmax": _switch(("shifted", "a max-shifted softmax", "decisions.md §2"),
                           ("naive", "a softmax without max-subtraction (overflows in float32 above ~88)",
                            "decisions.md §2")),
    },
    "squash": {
        "form": _switch(("paper", "the paper's squash", "decisions.md §7"),
                        ("misprint", "the misprinted squash z / (1 + ||z||^2)", "decisions.md §7")),
        "eps": _switch(("none", "no epsilon", "decisions.md §7"),
                       ("1e-9", "an epsilon 1e-9 inside the square root", "decisions.md §7"),
                       ("1e-8", "an epsilon 1e-8 inside the square root", "decisions.md §7"),
                       ("1e-7", "an epsilon 1e-7 inside the square root", "decisions.md §7")),
    },
    "attention": {
        "pow": _switch(("paper", "pow(s, p) of the raw score", "decisions.md §8"),
                       ("sign", "pow keeping the score's sign, sign(s) |s|^p", "decisions.md §8"),
                       ("abs", "pow of |s|, losing the sign", "decisions.md §8"),
                       ("none", "no pow: softmax of the raw scores (p = 1)", "decisions.md §8")),
        "mask": _switch(("valid", "attention over valid capsules only", "decisions.md §8"),
                        ("all", "masked capsules (k >= K'_u) take attention mass", "decisions.md §8")),
        "readout": _switch(("soft", "the soft attention readout", "decisions.md §9"),
                           ("hard", "a hard argmax readout instead of the softmax", "decisions.md §9")),
    },
    "interest_count": {
        "rule": _switch(("floor-log2", "K'_u from floor(log2 n)", "decisions.md §6"),
                        ("floor-log2-1p", "K'_u from floor(log2(1 + n)) (DeepMatch)", "decisions.md §6"),
                        ("floor-ln", "K'_u from floor(ln n) (EasyRec)", "decisions.md §6"),
                        ("ceil-log2", "K'_u from ceil(log2 n)", "decisions.md §6"),
                        ("none", "no dynamic K: K'_u = K for every user", "decisions.md §6")),
    },
    "sampled_softmax": {
        "logits": _switch(("dot", "logits v . e", "decisions.md §10"),
                          ("cosine", "cosine logits over the declared temperature", "decisions.md §10"),
                          *((f"cosine/{t}", f"cosine logits over a temperature {t} (torch-rechub's "
                             "loss, its example's temperature 0.02)" if t == "0.02" else
                             f"cosine logits over a temperature {t}", "decisions.md §10")
                            for t in ("1", "0.2", "0.1", "0.05", "0.02"))),
        "logq": _switch(("subtracted", "the logQ correction", "decisions.md §10"),
                        ("ignored", "no logQ correction (log Q not subtracted)", "decisions.md §10")),
        "hits": _switch(("removed", "accidental hits removed", "decisions.md §10"),
                        ("kept", "accidental hits kept among the negatives", "decisions.md §10")),
        "reduce": _switch(("mean", "the loss averaged over the batch", "decisions.md §10"),
                          ("sum", "the loss summed over the batch, not averaged", "decisions.md §10")),
    },
}


class Diagnosis(NamedTuple):
    """The smallest variants that reproduce the port on every probe (empty: none does), and the
    variant that explains most of the difference when none reproduces it all."""

    layer: str
    matches: tuple[tuple[Choice, ...], ...]  # each: the deviating choices of one variant
    probes: int
    partial: tuple[Choice, ...] = ()  # the deviations that remove most of the difference
    remaining: float = 0.0  # what is left of the difference with them, in error bounds

    def __str__(self) -> str:
        if self.matches == ((),):
            return f"it matches mindref on the {self.probes} diagnostic inputs: the difference is elsewhere"
        if self.matches:
            return " or ".join("matches mindref with " + " and ".join(f"{c.says} ({c.where})" for c in m)
                               for m in self.matches)
        if self.partial:
            named = " and ".join(f"{c.says} ({c.where})" for c in self.partial)
            return (f"partly explained by {named}: with it the difference falls to {self.remaining:.3g} "
                    "times the error bound; something else remains")
        return (f"none of the {self.layer} variants in mindref's catalogue reproduces it "
                f"({_count(self.layer)} tried on {self.probes} inputs): a new mistake, or several")


def declared(layer: str, conventions: dict | None) -> dict:
    """The full variant of `layer` (every switch) with the caller's conventions in place of
    mindref's choices; ValueError names an unknown switch or value and lists the known ones."""
    switches = SWITCHES[layer]
    for name, value in (conventions or {}).items():
        if name not in switches:
            raise ValueError(f"{layer}: no convention {name!r}; known: {', '.join(switches)}")
        values = [c.value for c in switches[name]]
        if value not in values:
            raise ValueError(f"{layer}: convention {name}={value!r} is not one of {', '.join(values)}")
    return {name: (conventions or {}).get(name, choices[0].value) for name, choices in switches.items()}


def is_mindref(layer: str, variant: dict) -> bool:
    return all(variant[name] == choices[0].value for name, choices in SWITCHES[layer].items())


def compute(layer: str, variant: dict, inputs: dict, settings: dict | None = None) -> np.ndarray:
    """The output of one variant of `layer` on inputs (a check's input dict)."""
    return _compute(layer, variant, {**inputs, **(settings or {})})


def _count(layer: str) -> int:
    return int(np.prod([len(v) for v in SWITCHES[layer].values()]))


def diagnose(layer: str, port: Callable, probes: list[dict], measure: Callable,
             declared: dict | None = None, settings: dict | None = None) -> Diagnosis:
    """The variants of `layer` (fewest deviations first) that reproduce port(probe) on every probe:
    measure(got, want, probe) -> how far apart, in units of the check's error bound (<= 1: the
    same, as the check judges it; inf: different shapes). port returns the layer's output as an
    array; an exception counts as no match. declared: switch -> value the caller declared as its
    convention (the base, not a deviation); settings: the check's own parameters the variants need
    (attention's p). Probe 0 is the failing input: a variant that brings it at least ten times
    closer than the base, without reproducing it all, is the partial explanation."""
    want = []
    for probe in probes:
        try:
            want.append(np.asarray(port(probe), np.float64))
        except Exception:  # noqa: BLE001 - a port that cannot run a probe matches nothing there
            want.append(None)
    base = {name: (declared or {}).get(name, choices[0].value) for name, choices in SWITCHES[layer].items()}
    switches = {name: tuple(sorted(choices, key=lambda c: c.value != base[name]))  # the base first
                for name, choices in SWITCHES[layer].items()}
    by_cost: dict[int, list] = {}
    for combo in itertools.product(*(range(len(v)) for v in switches.values())):
        by_cost.setdefault(sum(i > 0 for i in combo), []).append(combo)
    distance = {}
    for cost in sorted(by_cost):
        found = []
        for combo in by_cost[cost]:
            distance[combo] = _distance(layer, _named(switches, combo), probes, want, measure, settings or {})
            if distance[combo] <= 1:
                found.append(combo)
        if found:
            return Diagnosis(layer, tuple(_choices(switches, combo) for combo in found), len(probes))
    base_combo = (0,) * len(switches)
    best = min(distance, key=lambda c: (distance[c], sum(i > 0 for i in c)))
    if best != base_combo and distance[best] * 10 <= distance[base_combo]:
        return Diagnosis(layer, (), len(probes), _choices(switches, best), distance[best])
    return Diagnosis(layer, (), len(probes))


def _choices(switches: dict, combo: tuple) -> tuple[Choice, ...]:
    return tuple(switches[name][i] for name, i in zip(switches, combo) if i)


def _distance(layer: str, variant: dict, probes: list, want: list, measure: Callable,
              settings: dict) -> float:
    """The largest distance, over the probes, between the variant and the port (inf where the
    port could not run a probe)."""
    worst = 0.0
    for probe, w in zip(probes, want):
        if w is None:
            return np.inf
        worst = max(worst, measure(w, _compute(layer, variant, {**probe, **settings}), probe))
        if worst == np.inf:
            break
    return worst


def _named(switches: dict, combo: tuple) -> dict:
    return {name: choices[i].value for (name, choices), i in zip(switches.items(), combo)}


def same(got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> bool:
    """np.isclose everywhere (NaN equal to NaN), for the hints that compare whole outputs."""
    if got.shape != want.shape:
        return False
    with np.errstate(invalid="ignore"):
        return bool(np.all(np.isclose(got, want, rtol=rtol, atol=atol) | (np.isnan(got) & np.isnan(want))))


def _compute(layer: str, variant: dict, probe: dict) -> np.ndarray:
    with np.errstate(all="ignore"):
        return COMPUTE[layer](variant, **probe)


# --- the variants, each written out in NumPy -------------------------------------------------------

def _squash(z: np.ndarray, form: str = "paper", eps: str = "none") -> np.ndarray:
    s = np.sum(z * z, axis=-1, keepdims=True)  # ||z||^2
    if form == "misprint":
        return z / (1 + s)
    if eps == "none":
        return squash_forward(z)[0]
    return s / (1 + s) * z / np.sqrt(s + float(eps))


def _softmax(x: np.ndarray, mask: np.ndarray, axis: int, naive: bool) -> np.ndarray:
    """mindref's masked softmax, or the naive one: exp without max-subtraction, in float32."""
    if not naive:
        return masked_softmax(x, mask, axis)
    p = np.exp(np.where(mask, x, -np.inf).astype(np.float32)).astype(np.float64)
    total = np.sum(p, axis=axis, keepdims=True)
    return np.where(mask, p / np.where(total == 0, 1, total), 0)


def _routing(var: dict, e, S, b0, behaviour_mask, capsule_mask, iterations) -> np.ndarray:
    e_hat = e @ S.T  # [B, L, d]
    b = np.broadcast_to(b0, (*capsule_mask.shape, e.shape[1])).astype(np.float64)  # [B, K, L]
    valid = capsule_mask[:, :, None] & behaviour_mask[:, None, :]  # [B, K, L]
    axis = 1 if var["axis"] == "interests" else 2
    limit = {"every": int(iterations), "first-2": 2, "none": 0}[var["updates"]]
    form = "misprint" if var["squash"] == "misprint" else "paper"
    eps = var["squash"] if var["squash"] not in ("paper", "misprint") else "none"
    over = valid if var["padding"] == "excluded" else np.ones_like(valid)  # what the softmax runs over
    for t in range(int(iterations)):
        w = _softmax(b, over, axis, var["softmax"] == "naive")
        w = np.where(valid, w, 0)  # [B, K, L]
        z = w @ e_hat  # [B, K, d]
        u = _squash(z, form, eps)
        if t < int(iterations) - 1 and t < limit:
            b = b + (u if var["update_from"] == "u" else z) @ e_hat.transpose(0, 2, 1)
    return u


def _squash_variant(var: dict, z) -> np.ndarray:
    return _squash(z, var["form"], var["eps"])


def _attention(var: dict, V, e, capsule_mask, p: float = 2.0) -> np.ndarray:
    s = np.einsum("bkd,bd->bk", V, e)  # [B, K]
    logits = {"paper": lambda: np.power(s, p), "sign": lambda: np.sign(s) * np.abs(s) ** p,
              "abs": lambda: np.abs(s) ** p, "none": lambda: s}[var["pow"]]()
    mask = capsule_mask if var["mask"] == "valid" else np.ones_like(capsule_mask)
    if var["readout"] == "hard":
        best = np.argmax(np.where(mask, s, -np.inf), axis=1)
        a = (np.arange(s.shape[1])[None] == best[:, None]).astype(np.float64)
    else:
        a = _softmax(logits, mask, 1, False)
    return np.einsum("bk,bkd->bd", a, V)


def _interest_count(var: dict, lengths, K) -> np.ndarray:
    n = np.asarray(lengths, np.float64)
    raw = {"floor-log2": lambda: interest_count(np.asarray(lengths), int(K)).astype(np.float64),
           "floor-log2-1p": lambda: np.floor(np.log2(1 + n)), "floor-ln": lambda: np.floor(np.log(n)),
           "ceil-log2": lambda: np.ceil(np.log2(n)), "none": lambda: np.full_like(n, K)}[var["rule"]]()
    return np.clip(raw, 1, int(K))


def _sampled_softmax(var: dict, v, e_pos, e_neg, pos_ids, neg_ids, log_q_pos, log_q_neg,
                     temperature: float = 1.0) -> np.ndarray:
    logq = var["logq"] == "subtracted"
    if var["logits"].startswith("cosine/"):
        temperature = float(var["logits"].split("/")[1])
    if var["logits"].startswith("cosine"):
        unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)  # noqa: E731
        v, e_pos, e_neg = unit(v) / temperature, unit(e_pos), unit(e_neg)
    loss, _, _ = candidate_softmax(np.sum(v * e_pos, 1), v @ e_neg.T, pos_ids, neg_ids,
                                   log_q_pos if logq else None, log_q_neg if logq else None,
                                   var["hits"] == "removed")
    return np.asarray(loss * (len(v) if var["reduce"] == "sum" else 1))


def tower_without_relu(params: dict, cfg, item_fields: tuple, hist: np.ndarray, profile: np.ndarray
                       ) -> np.ndarray:
    """model.user_vectors with every hidden layer linear: the mistake of a port that drops the ReLU."""
    from .. import model as M
    _, e_hat_d, _, inverse = M.distinct_items(params, item_fields, hist.reshape(-1), cfg.num_items)
    e_hat = e_hat_d[inverse].reshape(*hist.shape, -1)  # [B, L, d]
    b0 = M.serving_logits(params, hist.shape[1])  # [K, L]
    _, cache = M.user_tower_forward(params, cfg, e_hat, hist != 0, profile, b0)
    x = cache.dense[0].x  # the concatenated capsules and profile
    for n in range(M.num_dense(cfg)):
        x = x @ params[f"dense_W_{n}"] + params[f"dense_b_{n}"]
    return x * cache.capsule_mask[..., None]


COMPUTE = {"routing": _routing, "squash": _squash_variant, "attention": _attention,
           "interest_count": _interest_count, "sampled_softmax": _sampled_softmax}
