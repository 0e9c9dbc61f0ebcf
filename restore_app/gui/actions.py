"""The main window's file, video and folder actions, as mixins so that the window module stays small.

Each mixin expects the attributes :class:`~restore_app.gui.main_window.MainWindow` sets up: ``vm``,
``runner``, ``player``, ``models``, ``compare``, ``video_bar``, ``eta`` and the helpers ``show_error``,
``clear_error``, ``_guard`` and ``refresh_images``.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtGui import QGuiApplication, QImage
from PySide6.QtWidgets import QFileDialog, QInputDialog

from restore_app.core.batch import BatchConfig, run_batch
from restore_app.core.errors import RestoreError
from restore_app.core.io import to_float, write_image
from restore_app.core.pipeline import RunOptions, check_chain, process_video
from restore_app.core.visual import comparison_strip, to_u8


class VideoActions:
    """Frame stepping, playback with our own decoder, and processing a whole video."""

    def seek(self, index: int) -> None:
        if self.vm.document is None or self.vm.document.video is None or self.player.playing:
            return
        if self._guard(self.vm.seek, index):
            self.video_bar.set_frame(self.vm.document.frame)
            self.setWindowTitle(f"Restore — {self.vm.document.title}")
            self.refresh_images()

    def toggle_play(self, on: bool) -> None:
        doc = self.vm.document
        if not on or doc is None or doc.video is None:
            self.player.stop()
            return
        start = 0 if doc.frame >= doc.video.frame_count - 1 else doc.frame
        self.player.play(doc.path, doc.video, start)

    def _played_frame(self, index: int, frame) -> None:
        doc = self.vm.document
        if doc is None or doc.video is None:
            return
        doc.image, doc.frame = to_float(frame), index
        self.vm.result = None
        self.video_bar.set_frame(index)
        self.compare.set_images(doc.image, None)

    def process_video_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save restored video", self.vm.settings.last_folder,
                                              "Video (*.mp4 *.mkv *.mov)")
        if path:
            self.process_video(path)

    def process_video(self, out: str | Path) -> None:
        doc = self.vm.document
        if doc is None or doc.video is None or self.runner.running:
            return
        try:
            self.vm.check_chain(self.vm.chain)
            restorers = [self.vm.restorer(i) for i in self.vm.chain]
        except RestoreError as exc:
            self.show_error(str(exc))
            return
        src = doc.path
        options = RunOptions(sigma=self.models.sigma_value())
        self.start_job(lambda progress, cancel: process_video(src, Path(out), restorers, options,
                                                                 progress=progress, cancel=cancel))



class FolderActions:
    """File → Process folder…: the same batch core as ``restore batch``."""

    def folder_dialog(self) -> None:
        src = QFileDialog.getExistingDirectory(self, "Folder to process", self.vm.settings.last_folder)
        if not src:
            return
        dst = QFileDialog.getExistingDirectory(self, "Output folder (outside the input folder)", src)
        if dst:
            self.process_folder(src, dst)

    def process_folder(self, src: str | Path, dst: str | Path, recursive: bool = True) -> None:
        if self.runner.running:
            return
        try:
            ids = self.vm.chain or []
            check_chain([self.vm.registry.get(i) for i in ids])
            cfg = BatchConfig(Path(src), Path(dst), tuple(ids), recursive=recursive,
                              simulate=self.vm.degradation)
            restorers = [self.vm.restorer(i) for i in ids]
        except RestoreError as exc:
            self.show_error(str(exc))
            return
        self.start_job(lambda progress, cancel: run_batch(
            cfg, restorers, progress=lambda summary, _msg: progress(len(summary.results), summary.total),
            cancel=cancel))



class ExportActions:
    """Export the result (PNG, 16-bit TIFF, JPEG), copy it, save a comparison strip."""

    def export_result(self, path: str | Path, quality: int = 95) -> Path:
        if self.vm.result is None:
            raise RestoreError("nothing to export yet: run a model first")
        if self.vm.labels is not None:  # a label map, with its overlay and instance table beside it
            from restore_app.core.segment import write_segmentation

            return write_segmentation(Path(path), self.vm.labels, self.vm.before())
        return write_image(path, self.vm.result, quality=quality,
                           bit_depth=16 if Path(path).suffix.lower() in (".tif", ".tiff") else None)

    def export_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export result", self.vm.settings.last_folder,
                                              "PNG (*.png);;16-bit TIFF (*.tif);;JPEG (*.jpg)")
        if not path:
            return
        quality = 95
        if Path(path).suffix.lower() in (".jpg", ".jpeg"):
            quality, ok = QInputDialog.getInt(self, "JPEG quality", "Quality (1–100)", 95, 1, 100)
            if not ok:
                return
        if self._guard(self.export_result, path, quality):
            self.statusBar().showMessage(f"Exported {path}", 5000)

    def copy_result(self) -> None:
        if self.vm.result is None:
            self.show_error("nothing to copy yet: run a model first")
            return
        u8 = to_u8(self.vm.result)
        image = QImage(u8.data, u8.shape[1], u8.shape[0], u8.strides[0], QImage.Format.Format_RGB888).copy()
        QGuiApplication.clipboard().setImage(image)
        self.statusBar().showMessage("Result copied to the clipboard", 3000)

    def save_comparison(self, path: str | Path) -> Path:
        panels = [("before", self.vm.before())]
        if self.vm.result is not None:
            panels.append((f"after: {' → '.join(self.vm.result_chain)}", self.vm.result))
        if self.vm.ground_truth() is not None:
            panels.append(("reference", self.vm.ground_truth()))
        if panels[0][1] is None:
            raise RestoreError("nothing to compare yet: open an image")
        return write_image(path, comparison_strip(panels, height=480))

    def comparison_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save comparison", self.vm.settings.last_folder, "PNG (*.png)")
        if path:
            self._guard(self.save_comparison, path)
