"""`python -m dashboards` (`make dashboards`): write the Grafana dashboards
(docs/dashboards/*.json) and the Prometheus consoles (docs/consoles/*.html, and their library
in docs/console_libraries/) from dashboards/panels.py; `check` fails when the committed files
differ from what it would write; `screenshots` takes a headless Chromium's picture of each
console of a running Prometheus (`make screenshots`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dashboards import consoles, grafana
from dashboards.panels import DASHBOARDS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
GRAFANA_DIR = DOCS / "dashboards"
CONSOLES_DIR = DOCS / "consoles"
LIBRARIES_DIR = DOCS / "console_libraries"


def generated() -> dict[Path, str]:
    """Every generated file and its text."""
    files = {LIBRARIES_DIR / consoles.LIBRARY_NAME: consoles.library()}
    for board in DASHBOARDS:
        files[GRAFANA_DIR / f"{board.uid}.json"] = grafana.render(board)
        files[CONSOLES_DIR / consoles.file_name(board)] = consoles.render(board)
    return files


def stale() -> list[Path]:
    """The generated files missing or different from what `generated` makes, and files of
    those folders it would not make."""
    files = generated()
    wrong = [path for path, text in files.items() if not path.is_file() or path.read_text() != text]
    for folder in (GRAFANA_DIR, CONSOLES_DIR, LIBRARIES_DIR):
        wrong += [path for path in sorted(folder.glob("*")) if path not in files]
    return wrong


def write() -> None:
    """Write every generated file, and remove the others of those folders."""
    files = generated()
    for folder in (GRAFANA_DIR, CONSOLES_DIR, LIBRARIES_DIR):
        folder.mkdir(parents=True, exist_ok=True)
        for path in folder.glob("*"):
            if path not in files:
                path.unlink()
    for path, text in files.items():
        path.write_text(text)
        print(path.relative_to(ROOT))


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m dashboards", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("write", help="write the dashboards and consoles (the default)")
    commands.add_parser("check", help="fail when the committed files are not what write makes")
    shots = commands.add_parser("screenshots", help="a PNG of each console of a Prometheus")
    shots.add_argument(
        "--prometheus", default="http://127.0.0.1:9090", help="its URL (%(default)s)"
    )
    shots.add_argument("--into", type=Path, default=DOCS, help="the folder (%(default)s)")
    shots.add_argument("--range", default="1h", help="how far back the graphs reach (%(default)s)")
    args = parser.parse_args(argv)
    if args.command == "check":
        wrong = stale()
        if wrong:
            names = ", ".join(str(p.relative_to(ROOT)) for p in wrong)
            sys.exit(f"stale: {names}; run `make dashboards`")
        return
    if args.command == "screenshots":
        # Selenium is a development dependency: only this command needs it.
        from dashboards.screenshots import take

        for path in take(args.prometheus, args.into, args.range):
            print(path)
        return
    write()


if __name__ == "__main__":
    main()
