# The two commands (README): `make demo` and `make test`. Each sets everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test setup models system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[demo,test]'
	touch $(STAMP)

setup: $(STAMP)

models: $(STAMP)
	$(VENV)/bin/livemod models prepare

demo: models
	$(VENV)/bin/livemod demo

# Debian's ffmpeg is the real RTMP server of the live-source tests; they skip, saying so, without it.
system-deps:
	@command -v ffmpeg >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null; } || \
		echo "ffmpeg is not installed and cannot be installed here: the RTMP tests will skip"

# Apache Kafka's jars (Maven Central) for the Kafka lane; says why and goes on where Java or Maven is missing
# (fails under CI=true, where the lane must run)
test: models system-deps
	$(PY) -m tests.kafka.fetch
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .cache out
