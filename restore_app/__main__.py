"""``python -m restore_app``: the same entry point as the ``restore`` console script."""

from restore_app.launcher import main

if __name__ == "__main__":
    raise SystemExit(main())
