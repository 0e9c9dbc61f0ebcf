"""The window's widgets; each displays part of :class:`~restore_app.gui.viewmodels.MainViewModel`."""
