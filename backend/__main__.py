"""``python -m backend [--host 127.0.0.1] [--port 9090]``: run the ML backend (one uvicorn worker)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from backend.settings import Settings, SettingsError, startup_problem


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9090)
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    problem = startup_problem(settings)
    if problem is not None:
        print(f"configuration error: {problem}", file=sys.stderr)
        return 2
    logger = logging.getLogger("backend")
    settings.log_summary(logger)
    os.environ.setdefault("YOLO_CONFIG_DIR", str(settings.scratch_dir / "yolo-config"))
    os.environ.setdefault("MPLCONFIGDIR", str(settings.scratch_dir / "mpl"))

    import uvicorn

    from backend.app import create_app

    app = create_app(settings)
    uvicorn.run(
        app, host=args.host, port=args.port, workers=1, log_level=settings.log_level.lower(), access_log=False
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
