# Empire Security: the two commands are `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SITE = $(shell $(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
PROTOS := $(shell find protos -name '*.proto')
STAMP := $(VENV)/.installed

.PHONY: install proto run test lint bench validate clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The gateway's descriptor set also carries the error detail types, so REST errors
# come back as JSON with ErrorInfo and BadRequest. It is a second protoc call:
# generating Python for google/rpc would shadow the installed package.
proto: $(STAMP)
	mkdir -p deploy/envoy
	$(PY) -m grpc_tools.protoc -Iprotos -I$(SITE) \
		--python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)
	$(PY) -m grpc_tools.protoc -Iprotos -I$(SITE) \
		--include_imports --include_source_info \
		--descriptor_set_out=deploy/envoy/empire.pb \
		$(PROTOS) google/rpc/error_details.proto google/rpc/status.proto

run: proto
	$(PY) -m shared.run_all

test: proto
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: proto
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: proto
	$(PY) -m bench $(BENCH_ARGS)

validate: proto
	$(PY) -m deploy.validate

clean:
	rm -rf empire deploy/envoy/empire.pb .pytest_cache .mypy_cache
