"""Before/after comparison: a split view with a draggable divider, or synchronised side-by-side views
(before | after, plus the reference when there is one), or one image at a time."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Signal
from PySide6.QtWidgets import QCheckBox, QComboBox, QHBoxLayout, QLabel, QStackedWidget, QVBoxLayout, QWidget

from restore_app.gui.widgets.image_view import ImageCanvas, ViewState

MODES = ("Split", "Side by side", "Before", "After", "Reference")


class CompareView(QWidget):
    """``set_images(before, after, heat, reference)``; mode and heat-map layer are chosen above it."""

    regionSelected = Signal(int, int, int, int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.view = ViewState()
        self.split_canvas = ImageCanvas(self.view)
        self.left, self.right, self.third = ImageCanvas(self.view), ImageCanvas(self.view), ImageCanvas(self.view)
        for canvas in (self.split_canvas, self.left, self.right, self.third):
            canvas.regionSelected.connect(self.regionSelected)
        side = QWidget()
        row = QHBoxLayout(side)
        row.setContentsMargins(0, 0, 0, 0)
        for canvas in (self.left, self.right, self.third):
            row.addWidget(canvas)
        self.stack = QStackedWidget()
        self.stack.addWidget(self.split_canvas)
        self.stack.addWidget(side)
        self.mode = QComboBox()
        self.mode.addItems(MODES)
        self.mode.setToolTip("Split: drag the divider. Side by side: zoom and pan stay in step.")
        self.heat = QCheckBox("Error heat-map")
        self.heat.setToolTip("Show the per-pixel error of the result instead of the result")
        self.zoom_label = QLabel()
        bar = QHBoxLayout()
        bar.addWidget(QLabel("View:"))
        bar.addWidget(self.mode)
        bar.addWidget(self.heat)
        bar.addStretch(1)
        bar.addWidget(self.zoom_label)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(bar)
        layout.addWidget(self.stack, 1)
        self.mode.currentIndexChanged.connect(self._refresh)
        self.heat.toggled.connect(self._refresh)
        self.view.changed.connect(lambda: self.zoom_label.setText(f"{self.view.zoom * 100:.0f} %"))
        self._images: tuple = (None, None, None, None)
        self.captions = ("before", "after", "reference")

    def set_images(self, before: np.ndarray | None, after: np.ndarray | None,
                   heat: np.ndarray | None = None, reference: np.ndarray | None = None) -> None:
        self._images = (before, after, heat, reference)
        self.heat.setEnabled(heat is not None)
        self._refresh()

    def set_region(self, region: tuple[int, int, int, int] | None) -> None:
        for canvas in (self.split_canvas, self.left, self.right, self.third):
            canvas.region = region
            canvas.update()

    def active_canvas(self) -> ImageCanvas:
        return self.split_canvas if self.stack.currentIndex() == 0 else self.right

    def _refresh(self) -> None:
        before, after, heat, reference = self._images
        shown = heat if (self.heat.isChecked() and heat is not None) else after
        cap_after = "error heat-map" if shown is heat and heat is not None else self.captions[1]
        # every canvas uses the largest image's pixel grid, so a ×4 result lines up with its input
        top = next((im for im in (shown, reference, before) if im is not None), None)
        scene = (top.shape[1], top.shape[0]) if top is not None else None
        mode = MODES[self.mode.currentIndex()]
        if mode == "Side by side":
            self.stack.setCurrentIndex(1)
            self.left.set_images(before, None, scene=scene)
            self.right.set_images(None, shown, scene=scene)
            self.third.set_images(None, reference, scene=scene)
            self.third.setVisible(reference is not None)
            self.left.caption, self.right.caption = (self.captions[0], ""), ("", cap_after)
            self.third.caption = ("", self.captions[2])
        else:
            self.stack.setCurrentIndex(0)
            c = self.split_canvas
            c.split = mode == "Split" and before is not None and shown is not None
            if mode == "Reference" and reference is not None:
                c.set_images(None, reference, scene=scene)
                c.caption = ("", self.captions[2])
            elif mode == "After" and shown is not None:
                c.set_images(None, shown, scene=scene)
                c.caption = ("", cap_after)
            elif mode in ("Before", "Reference", "After") or shown is None:
                c.set_images(before, None, scene=scene)
                c.caption = (self.captions[0], "")
            else:
                c.set_images(before, shown, scene=scene)
                c.caption = (self.captions[0], cap_after)
        self.update()
