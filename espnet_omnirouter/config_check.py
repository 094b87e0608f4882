"""Typed, named checks of the configuration keys we add to ESPnet.

ESPnet decorates its constructors with typeguard's ``@typechecked``, so a wrong type in
``encoder_conf`` fails at construction and names the argument.  The keys we add (the MoE
keys of ``encoder_conf``, ``model_conf`` of ``moe_espnet``, the ``roe_*`` options) are checked
the same way, with typeguard, and the error names the key as users write it
(``encoder_conf.num_experts``).  Two rules on top of typeguard's, for values read from YAML:

* an int is accepted where a float belongs (``router_jitter: 0``: PEP 484's numeric tower,
  as typeguard does); a float is not accepted where an int belongs (``num_experts: 4.0``), as
  ESPnet's own typed keys do not accept it either;
* ``true``/``false`` are not numbers (``bool`` is a subclass of ``int`` in Python, so plain
  typeguard lets ``num_experts: true`` through).

:func:`check_known_keys` rejects a key that a class does not take, with the valid keys of that
class and the closest match, before ESPnet's constructor would fail with
``unexpected keyword argument``.
"""
import collections.abc
import difflib
import functools
import inspect
import re
import typing
from typing import Any, Callable, Iterable, Mapping, Union

from typeguard import CollectionCheckStrategy, TypeCheckError, check_type

_SEQUENCES = (list, tuple, collections.abc.Sequence)
# PyYAML (YAML 1.1) reads 1e-3 as a string; it needs a dot (1.0e-3) to be a float.
_YAML_STRING_EXPONENT = re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$")
_NUMBER = re.compile(r"^[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$")
_NAMES = {bool: "true or false", int: "an int", float: "a number", str: "a string"}
_PLURALS = {bool: "booleans", int: "ints", float: "numbers", str: "strings"}


def describe(hint: Any) -> str:
    """A type hint in words: ``Optional[List[int]]`` -> ``a list of int, or null``."""
    if hint is type(None):
        return "null"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        parts = [describe(a) for a in args if a is not type(None)]
        text = " or ".join(parts)
        return f"{text}, or null" if type(None) in args else text
    if origin in _SEQUENCES:
        return f"a list of {_PLURALS.get(args[0], describe(args[0]))}" if args else "a list"
    return _NAMES.get(hint, getattr(hint, "__name__", str(hint)))


def _with_dot(exponent_number: str) -> str:
    mantissa, exponent = re.split("[eE]", exponent_number)
    return f"{mantissa}.0e{exponent}"


def _bool_as_number(value: Any, hint: Any) -> bool:
    """True when ``value`` holds a bool where ``hint`` wants a number (typeguard accepts it)."""
    alternatives = typing.get_args(hint) if typing.get_origin(hint) is Union else (hint,)
    if isinstance(value, bool):
        return bool not in alternatives and Any not in alternatives
    if isinstance(value, (list, tuple)):
        items = [typing.get_args(a)[0] for a in alternatives if typing.get_origin(a) in _SEQUENCES and typing.get_args(a)]
        return bool(items) and all(any(_bool_as_number(v, h) for v in value) for h in items)
    return False


def check_value(name: str, value: Any, hint: Any) -> None:
    """Raise ``TypeError`` naming ``name`` unless ``value`` is of type ``hint`` (rules above)."""
    try:
        check_type(value, hint, collection_check_strategy=CollectionCheckStrategy.ALL_ITEMS)
        ok = not _bool_as_number(value, hint)
    except TypeCheckError:
        ok = False
    if ok:
        return
    note = ""
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        if _YAML_STRING_EXPONENT.match(value.strip()):
            note = f" (YAML reads {value} as a string: write it with a dot, e.g. {_with_dot(value.strip())})"
        else:
            note = " (a quoted number is a string in YAML: remove the quotes)"
    raise TypeError(f"{name} must be {describe(hint)}, got {type(value).__name__} {value!r}{note}")


def check_arguments(prefix: str, func: Callable, arguments: Mapping[str, Any]) -> None:
    """Check each of ``arguments`` that ``func`` annotates; names are ``<prefix>.<argument>``."""
    hints = typing.get_type_hints(func)
    for name, value in arguments.items():
        if name in hints:
            check_value(f"{prefix}.{name}" if prefix else name, value, hints[name])


def typechecked_conf(prefix: str):
    """Decorator of an ``__init__``: like typeguard's ``@typechecked`` for the annotated
    arguments that the caller passed, the error naming ``<prefix>.<argument>``.

    The signature seen by ``inspect.signature`` (and so by ``--print_config``) is unchanged.
    """

    def decorate(func):
        signature = inspect.signature(func)
        plain = [n for n, p in signature.parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

        @functools.wraps(func)
        def checked(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            check_arguments(prefix, func, {n: v for n, v in bound.arguments.items() if n in plain and n != "self"})
            return func(*args, **kwargs)

        return checked

    return decorate


def check_known_keys(prefix: str, cls: type, given: Iterable[str]) -> None:
    """Raise ``TypeError`` naming each key of ``given`` that ``cls``'s (published) signature
    does not take, with its closest match, and listing the keys a config may set (those with
    a default, as ``--print_config`` lists them)."""
    params = inspect.signature(cls).parameters
    settable = [n for n, p in params.items() if p.default is not p.empty]
    unknown = []
    for key in given:
        if key not in params:
            close = difflib.get_close_matches(key, settable, n=1)
            unknown.append(f"{prefix}.{key}" + (f" (did you mean '{close[0]}'?)" if close else ""))
    if unknown:
        raise TypeError(
            f"{cls.__name__} has no key {', '.join(unknown)}; valid keys of {prefix}: {', '.join(settable)}"
        )
