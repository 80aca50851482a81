"""The one validation mechanism: typed arguments declared once, checked in one pass.

Every configurable thing declares its arguments once, with Python annotations:

* a recipe section is a frozen dataclass (``soulcli.recipe``);
* an optimizer or curvature estimator declares them in its constructor's signature;
* an objective declares them as annotated class attributes (``beta: Annotated[float,
  Range(gt=0), "help"] = 0.1``).

Bounds ride along in ``typing.Annotated`` metadata (:class:`Range`; a plain string there is
the help text), so a limit is written beside the argument it limits, in one place. :func:`check`
turns a raw mapping (YAML, ``--set``) into typed keyword arguments and appends every problem to
one list, each with its YAML path and a "did you mean"; the recipe calls it for every section
and for the per-component mappings (``optimizer.args``, ``unlearn.objective_args``), and the
registries call :func:`validate` (which raises one :class:`UserError` listing every problem)
for callers that build components directly. Non-finite numbers are rejected everywhere.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import math
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Mapping

from soulcli.errors import UserError, did_you_mean

MISSING: Any = dataclasses.MISSING
_SEQUENCES = (tuple, list, collections.abc.Sequence)


@dataclass(frozen=True)
class Range:
    """Bounds for a number (or each number of a list): ``gt``/``ge`` below, ``lt``/``le`` above."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def problem(self, value: float) -> str | None:
        """Why ``value`` is out of range (None when it is inside)."""
        parts = [f"{op} {bound if isinstance(bound, int) else f'{bound:g}'}"
                 for op, bound in ((">", self.gt), (">=", self.ge), ("<", self.lt), ("<=", self.le))
                 if bound is not None]
        ok = ((self.gt is None or value > self.gt) and (self.ge is None or value >= self.ge)
              and (self.lt is None or value < self.lt) and (self.le is None or value <= self.le))
        return None if ok else "must be " + " and ".join(parts)


POSITIVE = Range(gt=0)
NON_NEGATIVE = Range(ge=0)
AT_LEAST_ONE = Range(ge=1)
FRACTION = Range(ge=0, lt=1)  # e.g. an EMA coefficient
Seed = Annotated[int, Range(ge=0, lt=2**32)]  # what every generator takes (numpy's limit)


@dataclass(frozen=True)
class Param:
    """One declared argument: its type (``Annotated`` stripped), default, bounds and help."""

    name: str
    type: Any
    default: Any = MISSING
    range: Range | None = None
    help: str = ""

    @property
    def required(self) -> bool:
        return self.default is MISSING


def _split_annotated(tp: Any) -> tuple[Any, Range | None, str]:
    if typing.get_origin(tp) is typing.Annotated:
        base, *meta = typing.get_args(tp)
        bounds = next((m for m in meta if isinstance(m, Range)), None)
        text = " ".join(m for m in meta if isinstance(m, str))
        return base, bounds, text
    return tp, None, ""


def params_of(target: Any, skip: tuple[str, ...] = ()) -> dict[str, Param]:
    """The declared arguments of a dataclass, a callable's signature, or a class's annotated
    attributes that carry ``Annotated`` metadata (objectives' hyperparameters)."""
    out: dict[str, Param] = {}
    if dataclasses.is_dataclass(target):
        hints = typing.get_type_hints(target, include_extras=True)
        for f in dataclasses.fields(target):
            default = f.default
            if default is MISSING and f.default_factory is not MISSING:
                default = f.default_factory()
            base, bounds, text = _split_annotated(hints[f.name])
            out[f.name] = Param(f.name, base, default, bounds, text or f.metadata.get("help", ""))
        return out
    if isinstance(target, type) and getattr(target, "__declares_args__", False):
        hints = {}
        for klass in reversed(target.__mro__):
            hints.update(typing.get_type_hints(klass, include_extras=True)
                         if "__annotations__" in vars(klass) else {})
        for name, tp in hints.items():
            if name.startswith("_") or name in skip or typing.get_origin(tp) is not typing.Annotated:
                continue
            base, bounds, text = _split_annotated(tp)
            out[name] = Param(name, base, getattr(target, name, MISSING), bounds, text)
        return out
    fn = target.__init__ if isinstance(target, type) else target
    hints = typing.get_type_hints(fn, include_extras=True)
    for name, p in inspect.signature(fn).parameters.items():
        if name in ("self", "cls") or name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        base, bounds, text = _split_annotated(hints.get(name, Any))
        default = MISSING if p.default is inspect.Parameter.empty else p.default
        out[name] = Param(name, base, default, bounds, text)
    return out


def type_name(tp: Any) -> str:
    """How a type reads in an error message (``a number``, ``one of 'a', 'b'``)."""
    tp = _split_annotated(tp)[0]
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if origin in _SEQUENCES:
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if origin is tuple and len(args) > 1:
            return f"a list of {len(args)} {type_name(args[0]).removeprefix('a ').removeprefix('an ')}s"
        return f"a list of {type_name(args[0]) if args else 'values'}"
    if origin in (dict, collections.abc.Mapping):
        return "a mapping"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def coerce(value: Any, tp: Any, path: str, errors: list[str]) -> Any:
    """``value`` checked against ``tp`` (bounds included) and converted; MISSING after an error."""
    tp, bounds, _ = _split_annotated(tp)
    out = _coerce(value, tp, path, errors)
    problem = None if out is MISSING else _range_problem(out, bounds)
    if problem:
        errors.append(f"{path}: {problem}, got {value!r}")
        return MISSING
    return out


def _range_problem(value: Any, bounds: Range | None) -> str | None:
    if bounds is None:
        return None
    for v in value if isinstance(value, tuple) else (value,):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            problem = bounds.problem(v)
            if problem:
                return problem
    return None


def _coerce(value: Any, tp: Any, path: str, errors: list[str]) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path, errors)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        out_of_range = None
        for arg in (a for a in args if a is not type(None)):
            base, bounds, _ = _split_annotated(arg)
            trial: list[str] = []
            out = _coerce(value, base, path, trial)
            if trial:
                specific = [t for t in trial if ": expected " not in t]
                out_of_range = out_of_range or (specific[0].split(": ", 1)[1].rsplit(", got", 1)[0]
                                                if specific else None)
                continue
            problem = _range_problem(out, bounds)
            if problem is None:
                return out
            out_of_range = out_of_range or problem  # the type fitted, a bound did not
        errors.append(f"{path}: {out_of_range}, got {value!r}" if out_of_range
                      else f"{path}: expected {type_name(tp)}, got {value!r}")
        return MISSING
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices and not isinstance(value, bool):
            return value
        errors.append(f"{path}: {value!r} is not {type_name(tp)}"
                      f"{did_you_mean(str(value), map(str, choices))}")
        return MISSING
    if origin in _SEQUENCES:
        args = [a for a in typing.get_args(tp) if a is not Ellipsis] or [Any]
        fixed = origin is tuple and len(args) > 1
        if isinstance(value, str) and args[0] in (str, float, int):
            value = [v.strip() for v in value.split(",") if v.strip()]  # --set a=x,y
        if not isinstance(value, (list, tuple)) or (fixed and len(value) != len(args)):
            errors.append(f"{path}: expected {type_name(tp)}, got {value!r}")
            return MISSING
        before = len(errors)
        items = tuple(coerce(v, args[i] if fixed else args[0], f"{path}[{i}]", errors)
                      for i, v in enumerate(value))
        return MISSING if len(errors) > before else items
    if origin is collections.abc.Callable:  # code handed over by a caller, not a recipe key
        if callable(value):
            return value
        errors.append(f"{path}: expected a function, got {value!r}")
        return MISSING
    if origin in (dict, collections.abc.Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            errors.append(f"{path}: expected a mapping, got {value!r}")
            return MISSING
        kinds = typing.get_args(tp)
        if len(kinds) == 2 and kinds[1] is not Any:  # dict[str, X]: every value checked as an X
            before = len(errors)
            out = {k: coerce(v, kinds[1], f"{path}.{k}", errors) for k, v in value.items()}
            return MISSING if len(errors) > before else out
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an int beyond the float range
                number = math.inf
        elif isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):
                errors.append(f"{path}: must be a finite number, got {value!r}")
                return MISSING
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:
        return value
    elif value is None and tp is type(None):
        return None
    errors.append(f"{path}: expected {type_name(tp)}, got {value!r}")
    return MISSING


def check(params: Mapping[str, Param], raw: Mapping[str, Any], path: str, errors: list[str],
          owner: str = "", fill: bool = False) -> dict[str, Any]:
    """Typed keyword arguments from ``raw``; every problem appended to ``errors``.

    Unknown keys name the closest declared one and list them all (``owner`` says whose they
    are, e.g. "optimizer 'sophiag'"); missing required ones are reported. ``fill`` adds the
    defaults of keys ``raw`` does not give.
    """
    out: dict[str, Any] = {}
    for key, value in raw.items():
        sub = f"{path}.{key}" if path else str(key)
        if key not in params:
            whose = f" of {owner}" if owner else ""
            hint = did_you_mean(str(key), params) or f" (valid: {', '.join(sorted(params)) or 'none'})"
            errors.append(f"{sub}: unknown key{whose}{hint}")
            continue
        spec = params[key]
        if value is None and spec.default is None:
            out[key] = None
            continue
        converted = coerce(value, spec.type, sub, errors)
        problem = None if converted is MISSING else _range_problem(converted, spec.range)
        if problem:
            errors.append(f"{sub}: {problem}, got {value!r}")
        elif converted is not MISSING:
            out[key] = converted
    for key, spec in params.items():
        if key in raw:
            continue
        if spec.required:
            errors.append(f"{path + '.' if path else ''}{key}: required")
        elif fill:
            out[key] = spec.default
    return out


def validate(target: Any, raw: Mapping[str, Any], owner: str, skip: tuple[str, ...] = (),
             path: str = "") -> dict[str, Any]:
    """:func:`check` against ``params_of(target)``, raising one UserError with every problem."""
    errors: list[str] = []
    out = check(params_of(target, skip), raw, path, errors, owner)
    if errors:
        raise UserError("; ".join(errors))
    return out


def build(cls: type, raw: Any, path: str, errors: list[str]) -> Any:
    """An instance of dataclass ``cls`` from a raw mapping (MISSING if any problem)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        errors.append(f"{path or 'recipe'}: expected a mapping, got {raw!r}")
        return MISSING
    before = len(errors)
    kwargs = check(params_of(cls), raw, path, errors)
    if len(errors) > before:
        return MISSING
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        errors.append(f"{path or 'recipe'}: {exc}")
        return MISSING


def check_instance(obj: Any, path: str) -> None:
    """Re-check a dataclass instance built directly in code (not through :func:`build`) against
    its own declarations; one UserError naming every bad field."""
    errors: list[str] = []
    raw = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    check(params_of(type(obj)), raw, path, errors)
    if errors:
        raise UserError("; ".join(errors))


def declares_args(cls: type) -> type:
    """Mark a class whose ``Annotated`` class attributes are its arguments (see :func:`params_of`)."""
    cls.__declares_args__ = True  # type: ignore[attr-defined]
    return cls

