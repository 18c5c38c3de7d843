"""An options panel generated from a parameter dataclass (options declared once).

:class:`OptionsPanel` shows the fields of a parameter dataclass
(:class:`~napari_sam.everything.EverythingStackParams` in the dock widget) as
magicgui widgets made from :func:`napari_sam.options.widget_spec`: label,
tooltip (the field's help), choices and the value, with the options left to
the model filled in for the chosen model. Nothing here names an option.

What the user changes are the *overrides* (:class:`Overrides`, a mapping of
option name to value): the keyword arguments the action passes on. Options
not changed stay with the computation's defaults and the model's
recommendations, exactly as when no panel is shown. Scripts set overrides
through the mapping (``widget.everything_params["min_z_extent"] = 1``); the
panel shows them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QToolButton, QVBoxLayout, QWidget

from napari_sam.options import options_of, widget_spec

__all__ = ["OptionsPanel", "Overrides"]

#: Ranges of the spin boxes by value type (magicgui's defaults stop at 999 with
#: a step of 1): options' own checks say what is valid when the action runs.
SPIN_OPTIONS: dict[type, dict[str, Any]] = {
    int: {"min": 0, "max": 1_000_000},
    float: {"min": 0.0, "max": 1_000.0, "step": 0.05},
}


class Overrides(MutableMapping[str, Any]):
    """The options a user (or a script) set, by name; the names are the fields of ``cls``.

    Parameters
    ----------
    cls : the parameter dataclass
    on_set : called with ``(name, value)`` after an option is set, and with
        ``(name, None)`` after it is removed (the panel shows it)
    """

    def __init__(self, cls: type, on_set: Callable[[str, Any], None] | None = None) -> None:
        self.cls = cls
        self.names = tuple(info.name for info in options_of(cls))
        self._values: dict[str, Any] = {}
        self._on_set = on_set or (lambda name, value: None)

    def _check(self, name: str) -> None:
        if name not in self.names:
            raise KeyError(
                f"{self.cls.__name__} has no option {name!r}; valid: {', '.join(self.names)}"
            )

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __setitem__(self, name: str, value: Any) -> None:
        self._check(name)
        self._values[name] = value
        self._on_set(name, value)

    def __delitem__(self, name: str) -> None:
        del self._values[name]
        self._on_set(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Overrides({self.cls.__name__}, {self._values!r})"

    def replace(self, values: Mapping[str, Any]) -> None:
        """Exactly ``values`` from now on (unknown names refused before any change)."""
        for name in values:
            self._check(name)
        for name in list(self._values):
            del self[name]
        for name, value in values.items():
            self[name] = value


class OptionsPanel(QWidget):
    """A collapsed panel (a toggle button) of the options of ``cls``.

    Parameters
    ----------
    cls : a parameter dataclass with ``option()`` fields and ``for_model``
    title : the toggle button's text
    model : the model whose recommendations fill the options left to it
    parent : Qt parent

    Attributes
    ----------
    overrides : :class:`Overrides`: what was changed
    widgets : ``{name: magicgui widget}`` of the options shown (the fields
        that :func:`~napari_sam.options.widget_spec` lists)
    """

    def __init__(self, cls: type, title: str, model: str | None = None,
                 parent: QWidget | None = None) -> None:
        from magicgui.widgets import Container, create_widget
        from magicgui.widgets.bases import ValueWidget

        super().__init__(parent)
        self.cls = cls
        self.overrides = Overrides(cls, self._show_override)
        self._model = model
        self._showing = False
        self.toggle = QToolButton(self)
        self.toggle.setText(title)
        self.toggle.setCheckable(True)
        self.toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.toggle.setToolTip("Show the options (what you change here is used; the rest "
                               "stays with the model's recommendations)")
        self.toggle.toggled.connect(self._expand)
        self.widgets: dict[str, Any] = {}
        for name, spec in widget_spec(cls, self._model_values()).items():
            options = dict(spec["options"])
            if "choices" not in options:
                for key, value in SPIN_OPTIONS.get(spec["annotation"], {}).items():
                    options.setdefault(key, value)
            widget = create_widget(name=name, value=spec["value"],
                                   annotation=spec["annotation"], label=spec["label"],
                                   options=options)
            assert isinstance(widget, ValueWidget)  # options have values
            widget.changed.connect(lambda value, name=name: self._changed(name, value))
            self.widgets[name] = widget
        self.container = Container(widgets=list(self.widgets.values()))
        self.container.native.setParent(self)
        self.container.native.setVisible(False)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.toggle)
        layout.addWidget(self.container.native)

    def _model_values(self) -> Any:
        return self.cls().for_model(self._model)

    def _expand(self, on: bool) -> None:
        self.toggle.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)
        self.container.native.setVisible(on)

    def _changed(self, name: str, value: Any) -> None:
        """A widget was changed by the user: the option is overridden."""
        if not self._showing:
            self.overrides[name] = value

    def _show(self, name: str, value: Any) -> None:
        widget = self.widgets.get(name)
        if widget is None:
            return
        self._showing = True
        try:
            widget.value = value
        except (TypeError, ValueError):  # e.g. None in a spin box: the panel keeps its value
            pass
        finally:
            self._showing = False

    def _show_override(self, name: str, value: Any) -> None:
        if name in self.overrides:
            self._show(name, value)
        else:  # removed: back to the default / the model's recommendation
            self._show(name, getattr(self._model_values(), name))

    def set_model(self, model: str | None) -> None:
        """Show the recommendations of ``model`` for the options not overridden."""
        self._model = model
        values = self._model_values()
        for name in self.widgets:
            if name not in self.overrides:
                self._show(name, getattr(values, name))
