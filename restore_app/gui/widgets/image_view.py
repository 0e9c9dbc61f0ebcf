"""Zoomable, pannable image display with a before|after split, a display pyramid and region picking.

Coordinates: the *scene* is the "after" image's pixel grid (or the only image's). A "before" image
of another size (the input of a ×4 super-resolution) is stretched over the same scene, so the two
line up. :class:`ViewState` (zoom and centre, in scene pixels) can be shared by several canvases,
which keeps side-by-side views in step.
"""

from __future__ import annotations

import cv2
import numpy as np
from PySide6.QtCore import QObject, QPointF, QRect, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QImage, QKeyEvent, QMouseEvent, QPainter, QPen, QWheelEvent
from PySide6.QtWidgets import QWidget

from restore_app.core.visual import to_u8

ZOOM_MIN, ZOOM_MAX = 1 / 64, 64.0


def pyramid_levels(image: np.ndarray) -> list[np.ndarray]:
    """An image as uint8 RGB at full size and halved again and again (INTER_AREA) down to 512 px.

    Plain numpy, so a worker thread can build it; :class:`Pyramid` wraps the levels as QImages.
    """
    levels = [np.ascontiguousarray(to_u8(image))]
    while max(levels[-1].shape[:2]) > 512:
        arr = levels[-1]
        levels.append(cv2.resize(arr, (max(1, arr.shape[1] // 2), max(1, arr.shape[0] // 2)),
                                 interpolation=cv2.INTER_AREA))
    return levels


class Pyramid:
    """An image and its halvings as QImages: the canvas draws from the level nearest the zoom, so
    zooming out of a 24-megapixel image stays smooth."""

    _cache: list[tuple[np.ndarray, Pyramid]] = []

    def __init__(self, image: np.ndarray, levels: list[np.ndarray] | None = None) -> None:
        self._arrays = levels if levels is not None else pyramid_levels(image)  # QImages point into them
        self.width, self.height = self._arrays[0].shape[1], self._arrays[0].shape[0]
        self.levels = [QImage(a.data, a.shape[1], a.shape[0], a.strides[0], QImage.Format.Format_RGB888)
                       for a in self._arrays]

    @classmethod
    def of(cls, image: np.ndarray, levels: list[np.ndarray] | None = None) -> Pyramid:
        """The pyramid of ``image``, reused while the same array is shown again (mode switches);
        ``levels`` prepared by a worker thread spare the UI thread the work."""
        for arr, pyr in cls._cache:
            if arr is image:
                return pyr
        pyr = cls(image, levels)
        cls._cache = [(image, pyr)] + cls._cache[:5]
        return pyr

    def level_for(self, scale: float) -> tuple[QImage, float]:
        """The level to draw at ``scale`` screen pixels per image pixel, and its size factor."""
        k = 0
        while k + 1 < len(self.levels) and scale * 2 ** (k + 1) <= 1.0:
            k += 1
        return self.levels[k], 1 / 2 ** k


class ViewState(QObject):
    """Zoom (screen pixels per scene pixel) and the scene point at the view's centre."""

    changed = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.zoom = 1.0
        self.center = QPointF(0, 0)
        self.fit_pending = True

    def set(self, zoom: float | None = None, center: QPointF | None = None) -> None:
        if zoom is not None:
            self.zoom = float(np.clip(zoom, ZOOM_MIN, ZOOM_MAX))
        if center is not None:
            self.center = QPointF(center)
        self.fit_pending = False
        self.changed.emit()


class ImageCanvas(QWidget):
    """Shows ``after`` (and ``before`` left of a draggable divider in split mode).

    Mouse: wheel zooms about the cursor, left-drag pans (or moves the divider when grabbed near it),
    shift-drag selects a region (``regionSelected`` in scene pixels). Keys: F fit, 1 100 %, + / −
    zoom, arrows pan.
    """

    regionSelected = Signal(int, int, int, int)

    def __init__(self, view: ViewState | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.view = view or ViewState()
        self.view.changed.connect(self.update)
        self.before: Pyramid | None = None
        self.after: Pyramid | None = None
        self.split = False
        self.divider = 0.5  # fraction of the widget width
        self.region: tuple[int, int, int, int] | None = None
        self._scene: tuple[int, int] | None = None
        self.caption = ("", "")
        self._drag: str | None = None
        self._last = QPointF()
        self._rubber: QRectF | None = None
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setMouseTracking(True)
        self.setMinimumSize(200, 150)
        self.setAutoFillBackground(True)

    # -- content ---------------------------------------------------------------------------------
    def set_images(self, before: np.ndarray | None, after: np.ndarray | None,
                   scene: tuple[int, int] | None = None) -> None:
        """Show ``before`` and/or ``after``; ``scene`` (width, height) overrides the pixel grid, so a
        canvas showing only a small "before" can line up with one showing the large "after"."""
        old = self.scene_size()
        self.before = Pyramid.of(before) if before is not None else None
        self.after = Pyramid.of(after) if after is not None else None
        self._scene = scene
        if self.scene_size() != old or self.view.fit_pending:
            self.fit()
        self.update()

    def scene_size(self) -> tuple[int, int]:
        if self._scene is not None:
            return self._scene
        top = self.after or self.before
        return (top.width, top.height) if top is not None else (0, 0)

    # -- transforms ------------------------------------------------------------------------------
    def to_screen(self, p: QPointF) -> QPointF:
        z = self.view.zoom
        return QPointF((p.x() - self.view.center.x()) * z + self.width() / 2,
                       (p.y() - self.view.center.y()) * z + self.height() / 2)

    def to_scene(self, p: QPointF) -> QPointF:
        z = self.view.zoom
        return QPointF((p.x() - self.width() / 2) / z + self.view.center.x(),
                       (p.y() - self.height() / 2) / z + self.view.center.y())

    def fit(self) -> None:
        w, h = self.scene_size()
        if not w or self.width() < 2:
            return
        zoom = min(self.width() / w, self.height() / h) * 0.98
        self.view.set(zoom, QPointF(w / 2, h / 2))

    def actual_size(self) -> None:
        self.view.set(1.0, self.view.center)

    def zoom_by(self, factor: float, anchor: QPointF | None = None) -> None:
        anchor = anchor if anchor is not None else QPointF(self.width() / 2, self.height() / 2)
        before = self.to_scene(anchor)
        zoom = float(np.clip(self.view.zoom * factor, ZOOM_MIN, ZOOM_MAX))
        # keep the scene point under the anchor where it is
        cx = before.x() - (anchor.x() - self.width() / 2) / zoom
        cy = before.y() - (anchor.y() - self.height() / 2) / zoom
        self.view.set(zoom, QPointF(cx, cy))

    def pan_by(self, dx: float, dy: float) -> None:
        z = self.view.zoom
        self.view.set(None, QPointF(self.view.center.x() - dx / z, self.view.center.y() - dy / z))

    # -- painting --------------------------------------------------------------------------------
    def _draw(self, painter: QPainter, pyramid: Pyramid, clip: QRect) -> None:
        sw, sh = self.scene_size()
        sx, sy = sw / pyramid.width, sh / pyramid.height  # stretch a smaller "before" over the scene
        image, _ = pyramid.level_for(self.view.zoom * max(sx, sy))
        tl = self.to_screen(QPointF(0, 0))
        br = self.to_screen(QPointF(sw, sh))
        target = QRectF(tl, br)
        painter.save()
        painter.setClipRect(clip)
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, self.view.zoom * max(sx, sy) < 1)
        painter.drawImage(target, image, QRectF(0, 0, image.width(), image.height()))
        painter.restore()

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt naming)
        painter = QPainter(self)
        painter.fillRect(self.rect(), self.palette().window())
        full = self.rect()
        if self.split and self.before is not None and self.after is not None:
            x = int(self.divider * self.width())
            self._draw(painter, self.before, QRect(0, 0, x, self.height()))
            self._draw(painter, self.after, QRect(x, 0, self.width() - x, self.height()))
            painter.setPen(QPen(QColor(255, 255, 255), 2))
            painter.drawLine(x, 0, x, self.height())
            painter.setBrush(QColor(255, 255, 255))
            painter.drawEllipse(QPointF(x, self.height() / 2), 6, 6)
        elif self.after is not None:
            self._draw(painter, self.after, full)
        elif self.before is not None:
            self._draw(painter, self.before, full)
        if self.region is not None:
            x, y, w, h = self.region
            painter.setPen(QPen(QColor(255, 200, 0), 2, Qt.PenStyle.DashLine))
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.drawRect(QRectF(self.to_screen(QPointF(x, y)), self.to_screen(QPointF(x + w, y + h))))
        if self._rubber is not None:
            painter.setPen(QPen(QColor(255, 200, 0), 1))
            painter.drawRect(self._rubber)
        if self.split and self.caption[0]:
            self._label(painter, 8, self.caption[0])
            self._label(painter, int(self.divider * self.width()) + 8, self.caption[1])
        elif self.caption[1] or self.caption[0]:
            self._label(painter, 8, self.caption[1] or self.caption[0])
        painter.end()

    def _label(self, painter: QPainter, x: int, text: str) -> None:
        """A caption on a dark chip, readable over any image."""
        if not text:
            return
        rect = painter.fontMetrics().boundingRect(text).adjusted(-5, -3, 5, 3)
        rect.moveTo(x, 6)
        painter.fillRect(rect, QColor(0, 0, 0, 160))
        painter.setPen(QColor(255, 255, 255))
        painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, text)

    def resizeEvent(self, event) -> None:  # noqa: N802
        if self.view.fit_pending:
            self.fit()
        super().resizeEvent(event)

    # -- interaction -----------------------------------------------------------------------------
    def wheelEvent(self, event: QWheelEvent) -> None:  # noqa: N802
        steps = event.angleDelta().y() / 120
        if steps:
            self.zoom_by(1.25 ** steps, event.position())

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        if event.button() != Qt.MouseButton.LeftButton:
            return
        self._last = event.position()
        if event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
            self._drag = "region"
            self._rubber = QRectF(event.position(), event.position())
        elif self.split and abs(event.position().x() - self.divider * self.width()) < 10:
            self._drag = "divider"
        else:
            self._drag = "pan"

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        pos = event.position()
        if self._drag == "pan":
            self.pan_by(pos.x() - self._last.x(), pos.y() - self._last.y())
        elif self._drag == "divider":
            self.divider = float(np.clip(pos.x() / max(1, self.width()), 0.0, 1.0))
            self.update()
        elif self._drag == "region" and self._rubber is not None:
            self._rubber.setBottomRight(pos)
            self.update()
        elif self.split:
            near = abs(pos.x() - self.divider * self.width()) < 10
            self.setCursor(Qt.CursorShape.SplitHCursor if near else Qt.CursorShape.ArrowCursor)
        self._last = pos

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        if self._drag == "region" and self._rubber is not None:
            r = self._rubber.normalized()
            a, b = self.to_scene(r.topLeft()), self.to_scene(r.bottomRight())
            self._rubber = None
            self.regionSelected.emit(int(a.x()), int(a.y()), int(b.x() - a.x()), int(b.y() - a.y()))
        self._drag = None
        self.update()

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802
        key = event.key()
        step = 40
        actions = {
            Qt.Key.Key_F: self.fit, Qt.Key.Key_1: self.actual_size,
            Qt.Key.Key_Plus: lambda: self.zoom_by(1.25), Qt.Key.Key_Equal: lambda: self.zoom_by(1.25),
            Qt.Key.Key_Minus: lambda: self.zoom_by(0.8),
            Qt.Key.Key_Left: lambda: self.pan_by(step, 0), Qt.Key.Key_Right: lambda: self.pan_by(-step, 0),
            Qt.Key.Key_Up: lambda: self.pan_by(0, step), Qt.Key.Key_Down: lambda: self.pan_by(0, -step),
        }
        if key in actions:
            actions[key]()
        else:
            super().keyPressEvent(event)
