# digitd. On a fresh machine:  make demo   (main job)   and   make test
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PAHO16 := $(VENV)/paho16
PREFIX ?= /opt/digitd
DESTDIR ?=
SYSCONFDIR ?= /etc
SYSTEMDDIR ?= /etc/systemd/system
SYSUSERSDIR ?= /usr/lib/sysusers.d
INSTALL_REQUIREMENTS ?= $(if $(filter aarch64,$(shell uname -m)),requirements/jetson.txt,requirements/host.txt)
export TF_CPP_MIN_LOG_LEVEL ?= 2
DEVICE_CODE := daemon
# GStreamer tests: Debian's python3-opencv (built with GStreamer) needs Debian's own python3.
GST_VENV ?= .venv-gst
GST_PY := $(GST_VENV)/bin/python
GST_PACKAGES := python3-venv python3-opencv python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-rtsp-server-1.0 \
	gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly \
	gstreamer1.0-plugins-bad gstreamer1.0-libav
# The Nano's Python: CPython 3.6 from pyenv, with what requirements/jetson.txt resolves to there.
PYTHON36 ?= $(shell ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.6*/bin/python 2>/dev/null | tail -1)
VENV36 ?= .venv36
PY36 := $(VENV36)/bin/python
# The daemon's tests that run on 3.6 (training, export, install and browser tests are host-only).
PY36_TESTS := tests/test_batching.py tests/test_config.py tests/test_daemon_mqtt.py tests/test_postprocess.py \
	tests/test_publish.py tests/test_roi.py tests/test_sources.py tests/test_tensorrt_backend.py \
	tests/test_pipeline.py tests/test_preprocess.py tests/test_backends.py tests/test_security.py tests/test_predict_cli.py \
	tests/test_pipeline_in_process.py tests/test_web.py tests/test_outbox.py tests/test_notify.py \
	tests/test_publisher_in_process.py tests/test_several_cameras.py tests/test_reader.py

.PHONY: help setup gstreamer-env py36-env jetson-check mosquitto sevenzip browser fonts train-fonts soak data train train-small baselines export quantize eval eval-real eval-real-harder eval-meters test check lint demo build-engine install uninstall bench clean

help:
	@echo "make demo          run the daemon on the bundled sample video (CPU) and print what MQTT receives"
	@echo "                   (make demo SOURCES=2: the video as two cameras in one daemon)"
	@echo "make demo-setup    the sample video looping, with the setup page on http://127.0.0.1:8080/setup"
	@echo "make test          lint, Python 3.6 check and the test suite (installs what it needs)"
	@echo "make check         quick loop: lint and the tests not marked slow"
	@echo "make setup         create $(VENV) with the pinned dependencies"
	@echo "make data          download MNIST into data/mnist (needs internet)"
	@echo "make train         train the default model -> models/digits.keras"
	@echo "make train-small   train the small network (seed-001 sized, same data) -> models/small.*"
	@echo "make baselines     train the seed baselines (seed001, mlp) -> models/baselines/"
	@echo "make export        Keras -> ONNX (opset 13) + FP16 ONNX + sidecars"
	@echo "make eval          accuracy, per-class table and confusion matrices"
	@echo "make eval-real     read the 160 real sudoku photos in ../shared: figures + failure images"
	@echo "make eval-real-harder  the same photos blurred, at half size, worn by JPEG, dim and in a shadow (figures)"
	@echo "make eval-meters   read held-out meter digits made here (FreeFont drums, seven segments, transitions)"
	@echo "make quantize      int8 copies of the ONNX models for ONNX Runtime on the CPU (checked on MNIST)"
	@echo "make build-engine  ONNX -> TensorRT engine (on the Jetson; MODEL=small for the small network)"
	@echo "make jetson-check  what this device has (L4T, TensorRT, CUDA, OpenCV+GStreamer, pycuda, cameras)"
	@echo "make install       install under PREFIX=$(PREFIX) with the systemd unit (DESTDIR supported)"
	@echo "make bench         benchmarks -> bench/results/ (quick; BENCH_ARGS=--full: 1,000 frames per run)"
	@echo "make soak          SOAK_MINUTES=10 at 30 fps against Mosquitto: RSS, drops, latency -> bench/results/soak.*"

setup: $(STAMP)

$(STAMP): requirements/host.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/host.txt
	@touch $@

# System packages for the demo and tests (Mosquitto; Chromium for the browser test),
# installed with apt when missing and we are root.
APT_INSTALL = if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing $(1) with apt-get"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1) >/dev/null); \
	else echo "$(1) not found: install it with apt-get"; fi

mosquitto:
	@if command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto; then :; \
	else $(call APT_INSTALL,mosquitto); fi

# 7-Zip's single-core benchmark: this host's side of the Nano estimate in make bench.
sevenzip:
	@if command -v 7zz >/dev/null || command -v 7z >/dev/null || command -v 7za >/dev/null; then :; \
	else $(call APT_INSTALL,7zip); fi

browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	else $(call APT_INSTALL,chromium chromium-driver); fi

# Fonts for printed digits: FreeFont tests (never trained on); DejaVu, Liberation, Roboto
# and Open Sans train (with OpenCV's Hershey faces, see engine_build/fonts.py).
fonts:
	@if ls /usr/share/fonts/truetype/freefont/FreeSans.ttf >/dev/null 2>&1; then :; \
	else $(call APT_INSTALL,fonts-freefont-ttf); fi

train-fonts:
	@if ls /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf /usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf \
	  /usr/share/fonts/truetype/roboto/unhinted/RobotoTTF/Roboto-Regular.ttf \
	  /usr/share/fonts/truetype/open-sans/OpenSans-Regular.ttf >/dev/null 2>&1; then :; \
	else $(call APT_INSTALL,fonts-dejavu-core fonts-liberation fonts-roboto-unhinted fonts-open-sans); fi

data: $(STAMP)
	$(PY) -m engine_build.mnist download --data-dir data/mnist

# The shipped model: digitnet on MNIST, printed digits and marks, then fine-tuned with meter
# digits and the 12th class "digit in transition" (issue 13). The second step's seed 3 is the
# one of nine that kept every figure (MNIST 99.61 %, as before meter digits; README "The model")
train: $(STAMP) train-fonts
	$(PY) -m engine_build.train --output models/digits.keras
	$(PY) -m engine_build.train --init-from models/digits.keras --meter-digits 24000 --epochs 6 \
	  --learning-rate 1e-3 --seed 3 --output models/digits.keras

# The small network (seed-001 sized, 9.1 MFLOPs a crop against digitnet's 23.4) with the same
# data and the same two steps: for CPU-only boxes and crop-heavy modes (backend.onnx_model:
# models/small.onnx, see README "The model")
train-small: $(STAMP) train-fonts
	$(PY) -m engine_build.train --arch seed001 --output models/small.keras
	$(PY) -m engine_build.train --arch seed001 --init-from models/small.keras --meter-digits 24000 --epochs 6 \
	  --learning-rate 1e-3 --output models/small.keras
	$(PY) -m engine_build.export_onnx --model models/small.keras --output models/small.onnx
	$(PY) -m engine_build.quantize --model models/small.onnx

baselines: $(STAMP)
	$(PY) -m engine_build.train --arch seed001 --font-variants 0 --marks 0 --meter-digits 0 --output models/baselines/seed001.keras
	$(PY) -m engine_build.train --arch mlp --font-variants 0 --marks 0 --meter-digits 0 --output models/baselines/mlp.keras

export: $(STAMP)
	$(PY) -m engine_build.export_onnx --model models/digits.keras --output models/digits.onnx
	$(MAKE) quantize

# int8 copies for ONNX Runtime on the CPU (backend.onnx_precision: int8, the default), each
# checked against its float model on MNIST test
quantize: $(STAMP) train-fonts
	$(PY) -m engine_build.quantize --model models/digits.onnx
	$(PY) -m engine_build.quantize --model models/small.onnx

eval: $(STAMP)
	$(PY) -m engine_build.evaluate

eval-real: $(STAMP)
	$(PY) -m engine_build.eval_real

# The same photos read harder: defocused, half size, worn by JPEG, dim, half in a shadow
# (figures only, nothing written)
eval-real-harder: $(STAMP)
	$(PY) -m engine_build.eval_real --quiet --out "" --failures "" --blur 1.5
	$(PY) -m engine_build.eval_real --quiet --out "" --failures "" --scale 0.5
	$(PY) -m engine_build.eval_real --quiet --out "" --failures "" --jpeg 25
	$(PY) -m engine_build.eval_real --quiet --out "" --failures "" --light 0.6
	$(PY) -m engine_build.eval_real --quiet --out "" --failures "" --shadow 0.5

eval-meters: $(STAMP) fonts
	$(PY) -m engine_build.eval_meters

samples/meter.mp4:
	$(MAKE) $(STAMP) fonts
	$(PY) -m engine_build.make_meter_video --output $@

samples/demo.mp4:
	$(MAKE) $(STAMP)
	$(PY) -m engine_build.make_video --output $@

SOURCES ?= 1
demo: $(STAMP) mosquitto samples/demo.mp4
	$(PY) -m tools.demo --sources $(SOURCES)

.PHONY: demo-setup
demo-setup: $(STAMP) mosquitto samples/demo.mp4
	$(PY) -m tools.demo_setup

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/vermin -q --no-tips --violations -t=3.6- --eval-annotations $(DEVICE_CODE)

test: $(STAMP) mosquitto browser fonts lint gstreamer-env py36-env
	$(PY) -m pytest -q -m "not gstreamer"
	@# the MQTT tests once more with paho-mqtt 1.6 (the last release for the Nano's Python 3.6)
	@test -f $(PAHO16)/paho/mqtt/client.py || $(PY) -m pip install --quiet --target $(PAHO16) paho-mqtt==1.6.1
	PYTHONPATH=$(PAHO16) DIGITD_EXPECT_PAHO=1.6 $(PY) -m pytest -q -m "mqtt and not gstreamer" --ignore=tests/test_soak.py
	@# GStreamer for real: Debian's OpenCV, python3-gi, an RTSP server (see tests/test_gstreamer.py)
	DIGITD_REQUIRE_GSTREAMER=1 $(GST_PY) -m pytest -q -p no:cacheprovider -m gstreamer tests/test_gstreamer.py
	@# the device code on the Nano's Python 3.6, TensorRT through the simulator
	DIGITD_EXPECT_PAHO=1.6 $(PY36) -m pytest -q -p no:cacheprovider -m "not host and not gstreamer and not slow" $(PY36_TESTS)

# Debian's python3-opencv is built with GStreamer (as JetPack's is); a venv that sees it.
gstreamer-env: mosquitto $(GST_VENV)/.installed

$(GST_VENV)/.installed: requirements/gstreamer-test.txt
	@dpkg -s $(GST_PACKAGES) >/dev/null 2>&1 || $(call APT_INSTALL,$(GST_PACKAGES))
	@test -x $(GST_PY) || /usr/bin/python3 -m venv --system-site-packages $(GST_VENV)
	$(GST_PY) -m pip install --quiet -r requirements/gstreamer-test.txt
	@touch $@

py36-env: $(VENV36)/.installed

$(VENV36)/.installed: requirements/jetson.txt requirements/py36-test.txt
	@test -n "$(PYTHON36)" || { echo "no CPython 3.6 (pyenv install 3.6.15, or PYTHON36=...)"; exit 1; }
	@test -x $(PY36) || $(PYTHON36) -m venv $(VENV36)
	$(PY36) -m pip install --quiet pip==21.3.1
	@# pycuda needs CUDA to build: the TensorRT/pycuda simulator stands in for it here
	grep -v '^pycuda' requirements/jetson.txt > $(VENV36)/jetson-without-pycuda.txt
	$(PY36) -m pip install --quiet -r $(VENV36)/jetson-without-pycuda.txt -r requirements/py36-test.txt
	@touch $@

jetson-check:
	@py=python3; [ -x $(PY) ] && py=$(PY); $$py -m daemon.jetson_check

check: $(STAMP) fonts lint
	$(PY) -m pytest -q -x -m "not slow and not gstreamer"

# Code under PREFIX, config under SYSCONFDIR/digitd (never overwritten), the unit, the user.
# With DESTDIR (packaging, tests) nothing outside DESTDIR is touched: no user, venv or systemctl.
install:
	install -d $(DESTDIR)$(PREFIX) $(DESTDIR)$(SYSCONFDIR)/digitd $(DESTDIR)$(SYSTEMDDIR) $(DESTDIR)$(SYSUSERSDIR)
	tar --exclude=__pycache__ --exclude='*.engine' -cf - daemon models samples tools config.yaml \
	  requirements pyproject.toml README.md Makefile | tar -xf - -C $(DESTDIR)$(PREFIX)
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/digitd/config.yaml ]; then \
	  echo "keeping existing $(DESTDIR)$(SYSCONFDIR)/digitd/config.yaml"; \
	else install -m 0644 config.yaml $(DESTDIR)$(SYSCONFDIR)/digitd/config.yaml; fi
	sed -e 's#@PREFIX@#$(PREFIX)#g' -e 's#@SYSCONFDIR@#$(SYSCONFDIR)#g' systemd/digitd.service \
	  > $(DESTDIR)$(SYSTEMDDIR)/digitd.service
	install -m 0644 systemd/digitd.sysusers $(DESTDIR)$(SYSUSERSDIR)/digitd.conf
	@if [ -z "$(DESTDIR)" ]; then \
	  systemd-sysusers $(SYSUSERSDIR)/digitd.conf; \
	  chgrp digitd $(SYSCONFDIR)/digitd $(SYSCONFDIR)/digitd/config.yaml; \
	  chmod g+w $(SYSCONFDIR)/digitd $(SYSCONFDIR)/digitd/config.yaml; \
	  $(PYTHON) -m venv --system-site-packages $(PREFIX)/.venv; \
	  if [ "$(INSTALL_REQUIREMENTS)" = requirements/jetson.txt ]; then \
	    $(PREFIX)/.venv/bin/python -m pip install --quiet --upgrade pip==21.3.1; \
	    grep -v '^pycuda' $(PREFIX)/requirements/jetson.txt > $(PREFIX)/.venv/requirements.txt; \
	    $(PREFIX)/.venv/bin/python -m pip install --quiet -r $(PREFIX)/.venv/requirements.txt; \
	    PATH=/usr/local/cuda/bin:$$PATH $(PREFIX)/.venv/bin/python -m pip install --quiet --no-build-isolation pycuda; \
	  else $(PREFIX)/.venv/bin/python -m pip install --quiet -r $(PREFIX)/$(INSTALL_REQUIREMENTS); fi; \
	  systemctl daemon-reload 2>/dev/null || true; \
	  echo "installed; start with: systemctl enable --now digitd ; logs: journalctl -u digitd -f"; \
	fi

uninstall:
	-systemctl disable --now digitd 2>/dev/null
	rm -rf $(DESTDIR)$(PREFIX)
	rm -f $(DESTDIR)$(SYSTEMDDIR)/digitd.service $(DESTDIR)$(SYSUSERSDIR)/digitd.conf
	@echo "kept $(DESTDIR)$(SYSCONFDIR)/digitd (your config) and the digitd user"

# MODEL=small builds the small network's engine (models/small.fp16.engine) beside digitnet's
MODEL ?= digits
build-engine:
	@py=python3; [ -x $(PY) ] && py=$(PY); \
	$$py -m daemon.tensorrt.build --onnx models/$(MODEL).onnx

# Quick mode (about 10 minutes here); make bench BENCH_ARGS=--full for 1,000 frames per run.
bench: $(STAMP) mosquitto sevenzip
	$(PY) -m bench.run $(BENCH_ARGS)

SOAK_MINUTES ?= 10
soak: $(STAMP) mosquitto
	$(PY) -m tools.soak --minutes $(SOAK_MINUTES)

clean:
	rm -rf $(VENV) $(GST_VENV) $(VENV36) .pytest_cache .ruff_cache
