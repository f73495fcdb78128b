"""Running a check: generated inputs (Hypothesis, shrunk to the minimal failing one), the port
called twice on fresh copies of each input, its outputs validated before they are compared, and
every failure turned into one ConformanceError with its stage and diagnosis.
"""
from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from .errors import ConformanceError, Mismatch

PROFILES = {"ci": 1, "thorough": 10}  # MINDREF_CONFORMANCE=thorough: ten times the examples, for releases
STATEFUL = ("the same input gives different outputs from call to call: a fresh random draw per call "
            "(torch-rechub and ComiRec draw the routing logits inside forward) or state carried between "
            "calls (DeepMatch #105: logits kept from the last batch); decisions.md §3")


def hypothesis():
    try:
        import hypothesis
        from hypothesis import strategies as st
    except ImportError:
        raise ImportError("mindref.conformance needs Hypothesis: pip install 'mindref[conformance]'") \
            from None
    return hypothesis, st


def examples(max_examples: int, layer: str) -> int:
    profile = os.environ.get("MINDREF_CONFORMANCE", "ci")
    if profile not in PROFILES:
        raise ConformanceError(f"MINDREF_CONFORMANCE={profile!r}: one of {', '.join(PROFILES)}", layer, "kit")
    return max_examples * PROFILES[profile]


def run(layer: str, title: str, cases, compare: Callable, max_examples: int,
        explain: Callable | None = None) -> int:
    """compare() on generated cases; on a failure a ConformanceError with the minimal case and,
    for a difference, explain(mismatch) -> (stage, diagnosis): the first stage that diverges and
    the catalogued mistakes that reproduce it. Returns the number of examples run."""
    hyp, _ = hypothesis()
    max_examples = examples(max_examples, layer)
    from hypothesis.errors import FlakyFailure

    @hyp.settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(hyp.HealthCheck), print_blob=False, report_multiple_bugs=False)
    @hyp.given(cases)
    def go(case):
        compare(case)

    try:
        go()
    except Mismatch as m:
        raise failure(layer, title, m, explain) from None
    except FlakyFailure as group:  # the same input passed once and failed once: hidden state
        inner = next((e for e in group.exceptions if isinstance(e, Mismatch)), None)
        raise ConformanceError(f"{title}: inconsistent between calls with the same input: {inner}\n"
                               f"diagnosis: {STATEFUL}", layer, "inconsistent",
                               inputs=getattr(inner, "inputs", None), diagnosis=STATEFUL,
                               stage="state between calls") from None
    except ConformanceError:
        raise
    except Exception as err:  # noqa: BLE001 - the kit's own failure, reported as one
        raise ConformanceError(f"{title}: the kit failed ({type(err).__name__}: {err}); please report it "
                               "to mindref", layer, "kit") from None
    return max_examples


def failure(layer: str, title: str, m: Mismatch, explain: Callable | None) -> ConformanceError:
    """The ConformanceError of a Mismatch: its stage and diagnosis from explain() for a difference;
    a catalogued mistake that reproduces it outranks a hint."""
    stage, found = None, m.hint
    if m.kind == "inconsistent":
        stage, found = "state between calls", found or STATEFUL
    elif explain is not None and (m.kind == "differs" or m.kind == "output" and m.index is not None):
        try:
            stage, named = explain(m)
        except ConformanceError:
            raise
        except Exception as err:  # noqa: BLE001 - a failed explanation must not hide the failure
            stage, named = None, f"(the kit could not localise it: {type(err).__name__}: {err})"
        if getattr(named, "matches", None):
            found = named
        elif named:
            found = f"{found}; {named}" if found else named
    text = f"{title}: {m}" + (f"\nfirst differs at: {stage}" if stage else "") + (
        f"\ndiagnosis: {found}" if found else "")
    return ConformanceError(text, layer, m.kind, m.quantity, m.index, m.got, m.expected, m.inputs, found,
                            stage)


def show(case: dict) -> str:
    with np.printoptions(precision=6, suppress=True, threshold=200):
        return "\n".join(f"  {k} = {np.asarray(v)!r}" for k, v in case.items())


def as_output(value, name: str, case: dict) -> np.ndarray:
    """One output of the port as a float64 array; Mismatch(kind='output') for what is not one."""
    try:
        array = np.asarray(value)
    except Exception as err:  # noqa: BLE001 - e.g. a tensor that needs .numpy()
        raise Mismatch(f"returned {type(value).__name__} for {name}, which is not an array ({err}); return "
                       f"NumPy arrays\n{show(case)}", "output", quantity=name, inputs=case) from None
    if np.iscomplexobj(array):
        raise Mismatch(f"returned complex values for {name}; a MIND layer is real: return the real part only "
                       f"if you know it is exact\n{show(case)}", "output", quantity=name, inputs=case)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise Mismatch(f"returned {array.dtype} values for {name}, not numbers\n{show(case)}", "output",
                       quantity=name, inputs=case)
    return array


def call(fn: Callable, case: dict, *extra, outputs: int = 1) -> tuple:
    """The port's outputs (`outputs` of them), twice (fresh copies each time), checked to be
    arrays of numbers and equal between the two calls."""
    results = []
    for _ in range(2):
        args = [np.array(v, copy=True) for v in case.values()] + [np.array(x, copy=True) for x in extra]
        try:
            out = fn(*args)
        except Exception as err:  # noqa: BLE001 - reported with the input that caused it
            raise Mismatch(f"raised {type(err).__name__}: {err}\n{show(case)}", "raised",
                           inputs=case) from None
        if not isinstance(out, tuple | list) or (outputs == 1 and len(out) != 1):
            out = (out,)
        if len(out) != outputs:
            raise Mismatch(f"returned {len(out)} outputs, expected {outputs}\n{show(case)}", "output",
                           inputs=case)
        results.append(tuple(as_output(o, f"output {k}", case) for k, o in enumerate(out)))
    for a, b in zip(*results):
        if a.shape != b.shape or not np.array_equal(a, b, equal_nan=True):
            raise Mismatch(f"two calls with the same input gave different outputs\n{show(case)}",
                           "inconsistent",
                           inputs=case)
    return results[0]


def mindref_result(what: str, fn: Callable, case: dict, *args, **kwargs):
    """mindref's own result; its refusal of an input is reported as a convention it cannot compute."""
    try:
        return fn(*args, **kwargs)
    except (ValueError, FloatingPointError) as err:
        raise Mismatch(f"mindref cannot compute {what} for this input under the declared conventions "
                       f"({err}): declare a convention mindref supports\n{show(case)}", "convention",
                       inputs=case) from None


def compare(what: str, got, want, case: dict, tol, hint: str | None = None,
            bound: np.ndarray | None = None) -> None:
    """got against want within the per-entry bound (or rtol/atol); a Mismatch naming the first
    differing entry, the worst difference and the bound, with the input."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        raise Mismatch(f"{what}: shape {list(got.shape)}, mindref {list(want.shape)}\n{show(case)}", "output",
                       quantity=what, inputs=case, hint=hint)
    if bound is not None:
        bound = np.broadcast_to(bound, got.shape)
    bad = ~tol.close(got, want, bound)
    if not bad.any():
        return
    i = tuple(int(x) for x in np.argwhere(bad)[0])
    where = f"at index {list(i)}" if i else "(a scalar)"
    allowed = (f"error bound {float(bound[i]):.3g}" if bound is not None
               else f"rtol {tol.rtol}, atol {tol.atol}")
    kind = "differs"
    if not np.isfinite(got[i]) and np.isfinite(want[i]):
        kind, what_was = "output", f"{got[i]} (not finite), mindref {float(want[i]):.9g}"
    else:
        what_was = f"{float(got[i]):.9g}, mindref {float(want[i]):.9g}"
    with np.errstate(invalid="ignore"):
        worst = np.nanmax(np.abs(got - want)) if np.isfinite(got - want).any() else np.nan
    raise Mismatch(f"{what} differs {where}: {what_was} (max |diff| {worst:.3g}; {allowed})\n{show(case)}",
                   kind, quantity=what, index=list(i), got=float(got[i]), expected=float(want[i]),
                   inputs=case,
                   hint=hint or tol.hint(got, want, bound))
