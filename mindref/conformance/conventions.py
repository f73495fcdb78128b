"""The conventions a port declares: one flat set of names per layer (docs/conformance.md,
"Declaring a convention"), the same in a check's `conventions={...}`, in an adapter's
`conventions = {"routing": {...}}` and in the catalogue's switches.

    routing          axis, padding, updates, update_from, squash, softmax (the catalogue's), and
                     grad ('stop' | 'full'), dynamic_k (True | False), iterations (a fixed r)
    squash           form, eps
    attention        pow, mask, readout (the catalogue's), and mode ('pow' | 'hard' | 'scaled'), p
    interest_count   rule
    sampled_softmax  logits, logq, hits, reduce (the catalogue's), and temperature
    tower            normalized (True | False)
    pooling          (none)

A check's keyword arguments of earlier versions (softmax_axis, grad_mode, dynamic_k, iterations,
mode, p, temperature, normalized) are the same conventions under their old spellings.
"""
from __future__ import annotations

from .catalogue import SWITCHES
from .errors import ConformanceError

# the conventions that are not catalogue switches: name -> (mindref's value, the type they take)
SETTINGS = {
    "routing": {"grad": ("stop", str), "dynamic_k": (True, bool), "iterations": (None, int)},
    "attention": {"mode": ("pow", str), "p": (2.0, float)},
    "sampled_softmax": {"temperature": (1.0, float)},
    "tower": {"normalized": (False, bool)},
    "squash": {}, "interest_count": {}, "pooling": {},
}
ALIASES = {"softmax_axis": "axis", "grad_mode": "grad"}  # earlier spellings
CHOICES = {"grad": ("stop", "full"), "mode": ("pow", "hard", "scaled")}


def names(layer: str) -> list[str]:
    """Every convention name the layer takes."""
    return [*SWITCHES.get(layer, {}), *SETTINGS[layer]]


def resolve(layer: str, conventions, **keywords) -> tuple[dict, dict]:
    """(catalogue switches, settings) of a layer from the declared conventions and the check's
    keyword arguments (None: not given). ConformanceError(kind 'convention') for an unknown name,
    an unknown value, a value of the wrong type, or two values for one convention."""
    if conventions is None:
        conventions = {}
    if not isinstance(conventions, dict):
        raise ConformanceError(f"{layer}: conventions must be a dict of names to values (e.g. "
                               f"{{'{names(layer)[0] if names(layer) else 'name'}': ...}}), got "
                               f"{type(conventions).__name__}", layer, "convention")
    given = {ALIASES.get(k, k): v for k, v in conventions.items()}
    for key, value in keywords.items():
        key = ALIASES.get(key, key)
        if value is None:
            continue
        if key in given and given[key] != value:
            raise ConformanceError(f"{layer}: {key} declared twice ({given[key]!r} and {value!r})", layer,
                                   "convention")
        given[key] = value
    known = names(layer)
    unknown = [k for k in given if k not in known]
    if unknown:
        raise ConformanceError(f"{layer}: no convention {unknown[0]!r}; known: {', '.join(known) or 'none'}",
                               layer, "convention")
    switches = {k: v for k, v in given.items() if k in SWITCHES.get(layer, {})}
    for name, value in switches.items():
        values = [c.value for c in SWITCHES[layer][name]]
        if value not in values:
            raise ConformanceError(f"{layer}: convention {name}={value!r} is not one of {', '.join(values)}",
                                   layer,
                                   "convention")
    settings = {}
    for name, (default, kind) in SETTINGS[layer].items():
        value = given.get(name, default)
        if value is not None and not _fits(value, kind):
            raise ConformanceError(f"{layer}: convention {name}={value!r} must be a {kind.__name__}", layer,
                                   "convention")
        if name in CHOICES and value not in CHOICES[name]:
            raise ConformanceError(f"{layer}: convention {name}={value!r} is not one of "
                                   f"{', '.join(CHOICES[name])}",
                                   layer, "convention")
        settings[name] = kind(value) if value is not None else None
    return switches, settings


def _fits(value, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, kind)
