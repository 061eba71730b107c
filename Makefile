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

.PHONY: install demo demo-data run ingest split score filter shard verify summary test test-slow lint clean

$(VENV)/.installed: pyproject.toml constraints-ci.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install -c constraints-ci.txt -e '.[offline,dev]'
	touch $@

install: $(VENV)/.installed

demo-data: install
	$(REELSIFT) demo-data $(INPUT)

demo: demo-data
	$(REELSIFT) run --config $(CONFIG) --input $(INPUT) --root $(ROOT) $(SETS)
	$(REELSIFT) verify --root $(ROOT)

run: install
	$(REELSIFT) run --config $(CONFIG) --input $(INPUT) --root $(ROOT) $(SETS)

ingest: install
	$(REELSIFT) ingest --config $(CONFIG) --input $(INPUT) --root $(ROOT) $(SETS)

split score filter shard: install
	$(REELSIFT) $@ --config $(CONFIG) --root $(ROOT) $(SETS)

verify summary: install
	$(REELSIFT) $@ --root $(ROOT)

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf runs demo_data
