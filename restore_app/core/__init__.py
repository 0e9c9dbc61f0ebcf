"""The computing core of Restore: I/O, degradations, metrics, models, the inference engine.

Nothing under this package imports Qt; the GUI and the CLI are thin layers over it.
"""
