"""Options declared once: dataclass fields -> keyword arguments, CLI flags, widget panels.

Every option of a computation is one field of its parameter dataclass
(:class:`~napari_sam.everything.EverythingParams`,
:class:`~napari_sam.everything.EverythingStackParams`,
:class:`~napari_sam.propagation.PropagationParams`), declared with
:func:`option`: its default, a one-line help text, and how it is typed on the
command line. Everything else is derived from that one line:

* the functions take ``params=None, **overrides`` and call :func:`resolve`
  (``dataclasses.replace``; an unknown name is a ``TypeError`` that lists
  the valid ones);
* :func:`add_arguments` adds one ``--flag`` per field to an ``argparse``
  parser (help from the field), :func:`from_args` reads them back;
* :func:`widget_spec` gives, per field, the arguments of magicgui's
  ``create_widget`` (value, annotation, label, tooltip, choices), for an
  options panel built from the same fields.

A new option is one field. This module imports neither Qt, napari nor torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass
from typing import Any, TypeVar

T = TypeVar("T")

_KEY = "napari_sam.option"


@dataclass(frozen=True)
class OptionInfo:
    """What :func:`option` records about a field (read with :func:`options_of`).

    Attributes
    ----------
    name : the field's name (the keyword argument)
    default : its default value (``dataclasses.MISSING`` when it has none)
    help : one line for ``--help`` and tooltips
    flag : the command-line flag (default ``--name-with-dashes``); None: not on the CLI
    parse : ``str -> value`` for the command line (default: from the field's type)
    metavar, choices, nargs : as for ``argparse.add_argument``
    shown_default : how ``--help`` shows a default that is not a plain value
        (e.g. "the model's recommendation")
    widget : False to leave the field out of :func:`widget_spec`; a dict adds
        magicgui widget options (``min``, ``max``, ``step``...)
    """

    name: str
    default: Any
    help: str
    flag: str | None
    parse: Callable[[str], Any] | None = None
    metavar: str | tuple[str, ...] | None = None
    choices: Sequence[Any] | None = None
    nargs: int | str | None = None
    shown_default: str | None = None
    widget: bool | Mapping[str, Any] = True


def option(
    default: Any = MISSING,
    *,
    help: str,
    flag: str | None = "",
    parse: Callable[[str], Any] | None = None,
    metavar: str | tuple[str, ...] | None = None,
    choices: Sequence[Any] | None = None,
    nargs: int | str | None = None,
    shown_default: str | None = None,
    widget: bool | Mapping[str, Any] = True,
) -> Any:
    """A dataclass field that is an option (see the module docstring).

    Parameters
    ----------
    default : the default value
    help : one line: what the option does (``--help``, tooltips)
    flag : the command-line flag; ``""`` (default): ``--`` and the name with
        dashes; None: not a command-line option (data such as embeddings)
    parse, metavar, choices, nargs : for ``argparse`` (``parse`` is its ``type``)
    shown_default : the default as ``--help`` shows it, when it is not a value
    widget : False: not in an options panel; a dict: magicgui widget options
    """
    meta = {
        _KEY: {
            "help": help,
            "flag": flag,
            "parse": parse,
            "metavar": metavar,
            "choices": None if choices is None else tuple(choices),
            "nargs": nargs,
            "shown_default": shown_default,
            "widget": widget,
        }
    }
    return dataclasses.field(default=default, metadata=meta)


def documented(cls: type[T]) -> type[T]:
    """Class decorator: append an ``Attributes`` section made from the fields' help.

    So ``help(EverythingParams)`` and the API docs show every option, its
    default and its help without a second copy of the text. A class whose
    docstring already has an ``Attributes`` section is left as it is.
    """
    doc = cls.__doc__ or ""
    if "Attributes\n" in doc:
        return cls
    lines = ["", "", "    Attributes", "    ----------"]
    for info in options_of(cls):
        lines.append(f"    {info.name} : default {_shown(info)}")
        lines.append(f"        {info.help}")
    cls.__doc__ = doc.rstrip() + "\n".join(lines) + "\n"
    return cls


def _check_class(cls: type) -> None:
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"expected a parameter dataclass, got {cls!r}")


def options_of(cls: type) -> list[OptionInfo]:
    """The :class:`OptionInfo` of every field of a parameter dataclass, in order.

    A field declared without :func:`option` is an option without help text.
    """
    _check_class(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata.get(_KEY, {}))
        flag = meta.pop("flag", "")
        if flag == "":
            flag = "--" + f.name.replace("_", "-")
        meta.setdefault("help", "")
        out.append(OptionInfo(name=f.name, default=f.default, flag=flag, **meta))
    return out


def names_of(cls: type) -> tuple[str, ...]:
    """The option names (field names) of a parameter dataclass."""
    _check_class(cls)
    return tuple(f.name for f in dataclasses.fields(cls))


def resolve(
    cls: type[T],
    params: Any = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    caller: str | None = None,
) -> T:
    """``params`` (an instance, a mapping or None: the defaults) with ``overrides`` applied.

    Parameters
    ----------
    cls : the parameter dataclass
    params : an instance of ``cls`` (or of a parameter class whose fields
        ``cls`` shares), a mapping of option names, or None
    overrides : option names -> values (a function's ``**overrides``)
    caller : the function's name, for the error message

    Raises
    ------
    TypeError
        An unknown option name (the message lists the valid ones), or
        ``params`` of another type.
    ValueError
        A value the dataclass refuses (its own checks).
    """
    _check_class(cls)
    valid = names_of(cls)
    values: dict[str, Any] = {}
    if params is None:
        pass
    elif isinstance(params, Mapping):
        values.update(params)
    elif dataclasses.is_dataclass(params) and not isinstance(params, type):
        if isinstance(params, cls):
            base: Any = params
        else:  # e.g. EverythingParams given where EverythingStackParams is taken
            shared = {n: getattr(params, n) for n in names_of(type(params)) if n in valid}
            base = cls(**shared)
        values.update(overrides or {})
        _check_names(cls, values, valid, caller)
        return dataclasses.replace(base, **values) if values else base
    else:
        raise TypeError(
            f"{caller or cls.__name__}: params must be a {cls.__name__}, a mapping of option "
            f"names or None, got {type(params).__name__}"
        )
    values.update(overrides or {})
    _check_names(cls, values, valid, caller)
    return cls(**values)


def _check_names(cls: type, values: Mapping[str, Any], valid: Sequence[str],
                 caller: str | None) -> None:
    unknown = sorted(set(values) - set(valid))
    if unknown:
        who = caller or cls.__name__
        raise TypeError(
            f"{who} got unknown option{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))}; valid options ({cls.__name__}): "
            f"{', '.join(valid)}"
        )


def _field_types(cls: type) -> dict[str, Any]:
    import sys

    module = sys.modules.get(cls.__module__)
    return typing.get_type_hints(cls, vars(module) if module is not None else None)


def _plain_type(hint: Any) -> Any:
    """``int``, ``float``, ``str`` or ``bool`` for a hint like ``float | None``; else None."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    plain = [a for a in args if a in (bool, int, float, str)]
    return plain[0] if len(plain) == 1 and len(args) == 1 else None


def _shown(info: OptionInfo) -> str:
    if info.shown_default is not None:
        return info.shown_default
    if info.default is None:
        return "none"
    if isinstance(info.default, bool):
        return "on" if info.default else "off"
    if isinstance(info.default, float):
        return f"{info.default:g}"
    return str(info.default)


def add_arguments(
    parser: argparse.ArgumentParser | Any, cls: type, *, exclude: Sequence[str] = ()
) -> None:
    """One ``--flag`` per option of ``cls`` (fields with a flag, not in ``exclude``).

    The flag's ``dest`` is the field's name, its default the field's default,
    its help the field's help followed by ``[default]``. Booleans get
    ``--flag/--no-flag``. Read the values back with :func:`from_args`.
    """
    hints = _field_types(cls)
    for info in options_of(cls):
        if info.flag is None or info.name in exclude:
            continue
        kind = _plain_type(hints.get(info.name))
        kwargs: dict[str, Any] = {"dest": info.name, "default": info.default}
        help_text = f"{info.help} [{_shown(info)}]"
        if kind is bool and info.parse is None:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            parse = info.parse or kind
            if parse is None:
                raise TypeError(
                    f"option {cls.__name__}.{info.name} needs parse= to be a command-line "
                    "option (or flag=None)"
                )
            kwargs["type"] = parse
            for key in ("metavar", "choices", "nargs"):
                if getattr(info, key) is not None:
                    kwargs[key] = getattr(info, key)
            if info.metavar is None and info.choices is None:
                kwargs["metavar"] = info.flag.lstrip("-").replace("-", "_").upper()
        kwargs["help"] = help_text.replace("%", "%%")
        parser.add_argument(info.flag, **kwargs)


def from_args(cls: type, args: argparse.Namespace, *, exclude: Sequence[str] = ()
              ) -> dict[str, Any]:
    """The options of ``cls`` that :func:`add_arguments` put on ``args``, by name."""
    return {
        info.name: getattr(args, info.name)
        for info in options_of(cls)
        if info.flag is not None and info.name not in exclude and hasattr(args, info.name)
    }


def widget_spec(
    cls: type, values: Any = None, *, exclude: Sequence[str] = ()
) -> dict[str, dict[str, Any]]:
    """Per option, the keyword arguments of ``magicgui.widgets.create_widget``.

    Parameters
    ----------
    cls : the parameter dataclass
    values : an instance of ``cls`` whose values fill the panel; default
        ``cls()``. Options left to the model are None there, which a spin box
        cannot show: pass the filled-in ones, e.g.
        ``EverythingParams().for_model(predictor.model_name)``
    exclude : option names to leave out

    Returns
    -------
    dict
        ``{name: {"value", "annotation", "label", "options"}}`` for every field
        shown in a panel (``widget`` not False, not in ``exclude``), in field
        order; ``annotation`` is the value's type (``int``, ``float``, ``str``,
        ``bool``), ``options`` holds the ``tooltip`` (the help), the
        ``choices`` and the field's widget options. Build a panel with
        ``Container(widgets=[create_widget(name=n, **s) for n, s in spec.items()])``
        and pass its values back as ``**overrides`` (or through :func:`resolve`).
    """
    hints = _field_types(cls)
    current = cls() if values is None else values
    out: dict[str, dict[str, Any]] = {}
    for info in options_of(cls):
        if info.widget is False or info.name in exclude:
            continue
        value = getattr(current, info.name)
        kind = type(value) if isinstance(value, (bool, int, float, str)) else None
        kind = kind or _plain_type(hints.get(info.name))
        options: dict[str, Any] = {"tooltip": info.help}
        if info.choices is not None:
            options["choices"] = list(info.choices)
        if isinstance(info.widget, Mapping):
            options.update(info.widget)
        out[info.name] = {
            "value": value,
            "annotation": kind if kind is not None else hints.get(info.name),
            "label": info.name.replace("_", " "),
            "options": options,
        }
    return out
