"""`reelsift report`: one self-contained HTML page about a run root, readable offline, and a
workbench to move the filter's bounds and see what changes.

`write_report(root, cfg)` writes `<root>/report/index.html` and its media folder: middle-frame
posters `thumbs/<clip_id>.jpg` and muted previews `previews/<clip_id>.mp4` (cut by the shard
stage's code; cached: clip ids never change meaning). No CDN, no external script or font; the
page's script and style (assets/) are inlined. Modules:

    data.py       DuckDB aggregates: filter's candidates, exact counts at the config, exact
                  histogram bins, the embedded sample
    workbench.py  the page data: sliders, clips near each bound (with media)
    media.py      posters and previews
    cards.py      the "Clips" section (a few clips per kept tier / rejection reason)
    page.py       write_report and the static sections
    assets/       report.js (the workbench, a mirror of filters/policy.py decide()), report.css
"""

from curation.report.page import write_report

__all__ = ["write_report"]
