"""The one error the conformance kit raises, and the kinds of failure it reports."""
from __future__ import annotations

import numpy as np

KINDS = {
    "differs": "the port's output differs from mindref's",
    "inconsistent": "two calls with one input gave two outputs (a fresh random draw, or state between calls)",
    "raised": "the port raised an exception",
    "output": "the port returned the wrong kind of output (type, shape, complex or non-finite values)",
    "convention": "a convention the kit cannot check, or mindref cannot compute on this input",
    "adapter": "the adapter itself is broken (its module, its class, its conventions)",
    "kit": "the kit itself failed: a bug to report to mindref",
}


class ConformanceError(AssertionError):
    """The other implementation differs from mindref, or could not be checked: the one error the
    kit raises (an AssertionError, so pytest shows it as a failed test). The message has the
    minimal example, the first stage that diverges and, where the catalogue of known mistakes
    reproduces the port within the check's own error bound, the mistake by name. Fields:

        layer      'routing', 'squash', ...
        kind       one of KINDS
        quantity   what differs ('routing output u', 'squash gradient dz', ...)
        index, got, expected   the first differing entry
        inputs     the minimal input (a dict of arrays)
        stage      the first stage of the layer that diverges, and on which probe input
        diagnosis  the catalogued mistake(s) that reproduce it, or a hint, or None
    """

    def __init__(self, message: str, layer: str, kind: str, quantity: str | None = None,
                 index: list | None = None, got: float | None = None, expected: float | None = None,
                 inputs: dict | None = None, diagnosis=None, stage: str | None = None):
        super().__init__(message)
        if kind not in KINDS:
            kind = "kit"
        self.layer, self.kind, self.quantity, self.index = layer, kind, quantity, index
        self.got, self.expected, self.inputs = got, expected, inputs
        self.diagnosis, self.stage = diagnosis, stage

    def report(self) -> dict:
        """The failure as JSON-able fields (inputs as nested lists)."""
        return {"layer": self.layer, "kind": self.kind, "quantity": self.quantity, "index": self.index,
                "got": self.got, "expected": self.expected, "stage": self.stage,
                "diagnosis": None if self.diagnosis is None else str(self.diagnosis),
                "inputs": {k: np.asarray(v).tolist() for k, v in (self.inputs or {}).items()},
                "message": str(self)}


class Mismatch(Exception):
    """One failed comparison inside a check, with what the report needs (turned into a
    ConformanceError by the runner)."""

    def __init__(self, text: str, kind: str = "differs", quantity: str | None = None,
                 index: list | None = None, got: float | None = None, expected: float | None = None,
                 inputs: dict | None = None, hint: str | None = None, relative: float | None = None):
        super().__init__(text)
        self.kind, self.quantity, self.index, self.got, self.expected = kind, quantity, index, got, expected
        self.inputs, self.hint, self.relative = inputs, hint, relative
