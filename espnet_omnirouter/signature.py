"""Inspectable signatures for classes that extend an ESPnet class with ``**kwargs``.

ESPnet's ``--print_config`` lists the keyword arguments that ``inspect.signature`` finds.
Our encoders and model forward every ESPnet keyword unchanged, so rather than spelling
them all out again we publish the merged signature: our keys first, then the base's.
"""
import inspect
from typing import Iterable


def publish_signature(cls, base, own: Iterable[inspect.Parameter], leading=()) -> None:
    """Set ``cls.__signature__`` to ``leading + own + base keywords`` (minus ``self``,
    minus the names already given); all but the leading parameters become keyword-only,
    which is how ESPnet passes them."""
    own = list(own)
    taken = {"self"} | {p.name for p in leading} | {p.name for p in own}
    rest = [p for n, p in inspect.signature(base.__init__).parameters.items() if n not in taken]
    keyword_only = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in [*own, *rest]]
    cls.__signature__ = inspect.Signature([*leading, *keyword_only])
