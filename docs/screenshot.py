"""The README's picture of the report, docs/report.png, taken from the demo run:

    make demo screenshot    # the demo run, then `reelsift report` on it and this script

Opens the report in the system `chromium` through Playwright (no browser download), moves one
bound as a user would (so the workbench shows what changes), waits for the page to show the
`reelsift filter` command for it, and writes the workbench in view to the PNG.

    python docs/screenshot.py runs/demo/report/index.html docs/report.png [--move 256p.motion_mean.min=0.2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

WIDTH, HEIGHT = 1400, 1050


def screenshot(report: Path, out: Path, move: str) -> list[str]:
    """Write the PNG -> the page's JS errors (none expected)."""
    from playwright.sync_api import sync_playwright

    exe = shutil.which("chromium")
    if exe is None:
        raise SystemExit("no chromium on PATH: `make browser` installs it (as root, from Debian)")
    slider, _, value = move.partition("=")
    tier, _, bound = slider.partition(".")
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True)
        page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.goto(report.resolve().as_uri())
        page.wait_for_function("document.body.dataset.images !== undefined")
        box = page.locator(f"[id={json.dumps('s-' + slider)}]").locator("xpath=..").locator(".num")
        box.fill(value)
        box.dispatch_event("change")
        page.wait_for_function("s => document.getElementById('wb-command').textContent.includes(s)",
                               arg=f"filter.tiers.{tier}.bounds.{bound}={value}")
        page.evaluate("document.getElementById('workbench').scrollIntoView()")
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out))
        browser.close()
    return errors


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report", type=Path, help="the report page, e.g. runs/demo/report/index.html")
    ap.add_argument("out", type=Path, help="the PNG to write, e.g. docs/report.png")
    ap.add_argument("--move", default="256p.motion_mean.min=0.2",
                    help="TIER.SCORE.min|max=VALUE: the bound to move before the picture")
    args = ap.parse_args(argv)
    if not args.report.is_file():
        print(f"{args.report}: no report there; run `reelsift report --config C --root R` first",
              file=sys.stderr)
        return 2
    errors = screenshot(args.report, args.out, args.move)
    if errors:
        print("the page reported errors:\n  " + "\n  ".join(errors), file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
