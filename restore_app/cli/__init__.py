"""The ``restore`` command line: a thin layer over :mod:`restore_app.core`."""
