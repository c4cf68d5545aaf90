"""String options without pydantic: a faster start for every command (issue 12 gap 6).

Typer (>= 0.29) converts every option value through a pydantic ``TypeAdapter`` built on
first use; importing pydantic and building one adapter per option cost ~0.1 s of each
daemon's start-up, before it can listen. Nearly all our options are strings (or lists
of strings) whose value already is a ``str``, which typer's adapter returns unchanged.
:func:`install` gives every option a converter that returns such values as typer
would and hands every other value (a boolean from the environment, a number from a
configuration file, bytes) to typer's own conversion, built when first needed, so
results and error messages stay typer's. Options left unset (``None``) need none.

It relies on typer's ``_TyperParameter`` internals; where those differ (another typer),
:func:`install` changes nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from typer._click.core import Command, Context
from typer._coercion import RuntimeParam, TypeDescriptor, build_runtime_param
from typer.core import TyperGroup, _TyperParameter

__all__ = ["LazyConversion", "install", "lazy_conversion"]


@dataclass(frozen=True)
class LazyConversion(RuntimeParam):
    """Typer's conversion of one option, built only for a value that needs it.

    ``strings`` is ``"one"`` for a ``str`` option and ``"many"`` for a ``list[str]``
    one: a value that already is that is returned as typer would return it.
    """

    descriptor: TypeDescriptor
    strings: Literal["one", "many"] | None

    @functools.cached_property
    def typer_param(self) -> RuntimeParam:
        """Typer's own conversion (it imports pydantic)."""
        return build_runtime_param(self.descriptor)

    def _coerce_value(self, value: Any, param: _TyperParameter, ctx: Context) -> Any:
        if self.strings == "many":
            if isinstance(value, list | tuple) and all(type(item) is str for item in value):
                return list(value)
        elif self.strings == "one" and type(value) is str:
            return value
        return self.typer_param._coerce_value(value, param=param, ctx=ctx)


def lazy_conversion(param: _TyperParameter) -> LazyConversion | None:
    """The :class:`LazyConversion` for ``param``, or None where typer opens a file."""
    descriptor = getattr(param, "type_descriptor", None)
    if not isinstance(descriptor, TypeDescriptor) or descriptor.file_annotation is not None:
        return None  # files are opened by typer's FileRuntimeParam, not converted
    info = descriptor.parameter_info
    strings: Literal["one", "many"] | None = None
    if getattr(info, "parser", None) is None:
        if descriptor.annotation is str:
            strings = "one"
        elif descriptor.annotation == list[str]:
            strings = "many"
    return LazyConversion(
        parameter_info=info,
        annotation=descriptor.annotation,
        descriptor=descriptor,
        strings=strings,
    )


def install(command: Command, ctx: Context) -> None:
    """Give every option of ``command`` and its sub-commands (their ``--help`` too) a
    :class:`LazyConversion`; ``ctx`` is the root context (it names the help options).

    All converters are built before any is set: a typer whose internals differ in a
    way that raises here (another ``RuntimeParam`` signature) keeps its own conversion
    for every option, never a mix, and the command still runs.
    """
    try:
        planned = list(_plan(command, ctx))
    except Exception:  # any mismatch with typer's internals: change nothing
        return
    for param, converter in planned:
        param._runtime_param = converter


def _plan(command: Command, ctx: Context) -> Iterator[tuple[_TyperParameter, LazyConversion]]:
    for param in [*command.params, command.get_help_option(ctx)]:
        if isinstance(param, _TyperParameter) and getattr(param, "_runtime_param", 0) is None:
            converter = lazy_conversion(param)
            if converter is not None:
                yield param, converter
    if isinstance(command, TyperGroup):
        for sub in command.commands.values():
            yield from _plan(sub, ctx)
