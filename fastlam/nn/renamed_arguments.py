"""Keyword arguments and attributes that were renamed, kept working for now: the old name warns
(``DeprecationWarning``) and forwards to the new one; old and new together are a TypeError.
The VQ family uses them for its move to vector-quantize-pytorch's argument names."""
from __future__ import annotations

import functools
import inspect
import warnings


def renamed_arguments(**old_to_new: str):
    """Decorator for an ``__init__`` whose keyword arguments were renamed: an old name still
    works for now, with a DeprecationWarning naming the new one; old and new together (the new
    one by keyword, positionally or inside ``**kwargs``) are a TypeError, since which should
    win is a guess."""

    def wrap(init):
        positional = [name for name, prm in inspect.signature(init).parameters.items()
                      if prm.kind in (prm.POSITIONAL_ONLY, prm.POSITIONAL_OR_KEYWORD)]
        owner = init.__qualname__.rsplit(".", 1)[0]

        @functools.wraps(init)
        def renamed(*args, **kwargs):
            for old, new in old_to_new.items():
                if old not in kwargs:
                    continue
                if new in kwargs or new in positional[:len(args)]:
                    raise TypeError(f"{owner}: got both {old!r} and {new!r}; {old!r} is the deprecated "
                                    f"name of {new!r}, pass only {new!r}")
                warnings.warn(f"{owner}({old}=...) is deprecated: use {new}=", DeprecationWarning, stacklevel=2)
                kwargs[new] = kwargs.pop(old)
            return init(*args, **kwargs)

        return renamed

    return wrap


class RenamedAttribute:
    """A deprecated attribute name that reads and writes the renamed attribute ``new``."""

    def __init__(self, new: str):
        self.new = new

    def __set_name__(self, owner, name):
        self.message = f"{owner.__name__}.{name} is deprecated: use .{self.new}"

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        warnings.warn(self.message, DeprecationWarning, stacklevel=2)
        return getattr(obj, self.new)

    def __set__(self, obj, value):
        warnings.warn(self.message, DeprecationWarning, stacklevel=2)
        setattr(obj, self.new, value)

