"""A port's adapter, every layer in one run (`mindref conform module:Class`): loading it, running
each layer's check with the conventions it declares, and the rows `mindref conform` prints.
Every failure, the adapter's own included, is one ConformanceError."""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
import traceback

from .checks_capsules import check_interest_count, check_routing, check_squash
from .checks_layers import check_attention, check_pooling, check_sampled_softmax, check_user_tower
from .errors import ConformanceError

# layer -> (check, the adapter's method for the forward, its method for the vjp or None)
LAYERS = {"pooling": (check_pooling, "pooling", None), "squash": (check_squash, "squash", "squash_vjp"),
          "interest_count": (check_interest_count, "interest_count", None),
          "routing": (check_routing, "routing", "routing_vjp"),
          "attention": (check_attention, "attention", "attention_vjp"),
          "sampled_softmax": (check_sampled_softmax, "sampled_softmax", "sampled_softmax_vjp"),
          "tower": (check_user_tower, "make_tower", None)}


def load(spec: str, where: str | None = None):
    """The adapter instance of 'module:Class' (the module found from `where`, default the current
    folder); ConformanceError(kind 'adapter') naming what is broken: the spec, the module (missing,
    or raising on import: a SyntaxError, a NameError), the class, its __init__."""
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise ConformanceError(f"adapter {spec!r}: expected module:Class (e.g. myport.checks:Adapter)",
                               "adapter",
                               "adapter")
    sys.path.insert(0, where or os.getcwd())  # an adapter beside the caller imports like a script's module
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == "hypothesis":
            raise ConformanceError(f"{err} (the kit needs Hypothesis: pip install 'mindref[conformance]')",
                                   "adapter", "adapter") from None
        raise ConformanceError(f"adapter {spec!r}: no module {err.name!r} (run from the folder that holds "
                               "it, or put it on PYTHONPATH)", "adapter", "adapter") from None
    except Exception as err:  # noqa: BLE001 - the adapter module itself is broken
        raise ConformanceError(f"adapter {spec!r}: importing {module_name} raised {_where(err)}", "adapter",
                               "adapter") from None
    finally:
        sys.path.pop(0)
    if not hasattr(module, class_name):
        raise ConformanceError(f"adapter {spec!r}: {module_name} has no {class_name}", "adapter", "adapter")
    try:
        adapter = getattr(module, class_name)()
    except Exception as err:  # noqa: BLE001
        raise ConformanceError(f"adapter {spec!r}: {class_name}() raised {_where(err)}", "adapter",
                               "adapter") from None
    conventions = getattr(adapter, "conventions", {})
    if not isinstance(conventions, dict) or not all(isinstance(v, dict) for v in conventions.values()):
        raise ConformanceError(f"adapter {spec!r}: conventions must be a dict of layer names to dicts (e.g. "
                               f"{{'routing': {{'axis': 'behaviours'}}}}), got {conventions!r:.80}",
                               "adapter",
                               "adapter")
    unknown = sorted(set(conventions) - set(LAYERS))
    if unknown:
        raise ConformanceError(f"adapter {spec!r}: conventions for {unknown[0]!r}, which is no layer; "
                               "layers: "
                               f"{', '.join(LAYERS)}", "adapter", "adapter")
    return adapter


def _where(err: BaseException) -> str:
    """'NameError: name x is not defined (my_port.py, line 12)'."""
    frames = traceback.extract_tb(err.__traceback__)
    if isinstance(err, SyntaxError):
        return f"SyntaxError: {err.msg} ({os.path.basename(err.filename or '?')}, line {err.lineno})"
    last = frames[-1] if frames else None
    place = f" ({os.path.basename(last.filename)}, line {last.lineno})" if last else ""
    return f"{type(err).__name__}: {err}{place}"


def layers(adapter) -> list[str]:
    """The layers an adapter has: a method named as in LAYERS (e.g. `routing`, `make_tower`)."""
    return [layer for layer, (_, forward, _) in LAYERS.items() if callable(getattr(adapter, forward, None))]


def check_layer(adapter, layer: str, max_examples: int | None = None) -> int:
    """Run one layer's check on an adapter, with the conventions it declares
    (`conventions = {"routing": {"axis": "behaviours"}, ...}`: one flat dict per layer)."""
    check, forward, vjp = LAYERS[layer]
    declared = getattr(adapter, "conventions", {})
    if not isinstance(declared, dict) or not isinstance(declared.get(layer, {}), dict):
        raise ConformanceError(f"{layer}: the adapter's conventions must be a dict of layer names to dicts",
                               layer, "adapter")
    kwargs = {"conventions": dict(declared.get(layer, {}))}
    if max_examples is not None:
        kwargs["max_examples"] = max_examples
    args = [getattr(adapter, forward)]
    if vjp is not None and callable(getattr(adapter, vjp, None)):
        args.append(getattr(adapter, vjp))
    return check(*args, **kwargs)


def run_adapter(adapter, only: list[str] | None = None, max_examples: int | None = None,
                quiet: bool = False) -> list[dict]:
    """Every layer in turn: rows of layer, result ('pass', 'FAIL', 'skipped'), detail (examples
    run, the diagnosis or first line of the failure, or why it was skipped) and report (a
    failure's ConformanceError.report()). quiet: what the port prints goes to stderr (stdout
    stays the caller's, e.g. for --json)."""
    have, rows = layers(adapter), []
    for layer, (_, forward, _) in LAYERS.items():
        if only and layer not in only:
            continue
        if layer not in have:
            rows.append({"layer": layer, "result": "skipped", "detail": f"the adapter has no `{forward}`"})
            continue
        try:
            with contextlib.redirect_stdout(sys.stderr) if quiet else contextlib.nullcontext():
                examples = check_layer(adapter, layer, max_examples)
            rows.append({"layer": layer, "result": "pass", "detail": f"{examples:,} examples"})
        except ConformanceError as err:
            detail = str(err.diagnosis) if err.diagnosis else (err.stage or str(err).splitlines()[0])
            rows.append({"layer": layer, "result": "FAIL", "detail": detail, "report": err.report()})
        except Exception as err:  # noqa: BLE001 - nothing escapes as anything but a row
            rows.append({"layer": layer, "result": "FAIL",
                         "detail": f"the kit failed: {type(err).__name__}: {err}",
                         "report": ConformanceError(str(err), layer, "kit").report()})
    return rows
