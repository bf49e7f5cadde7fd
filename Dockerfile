# One image for the four services; a Deployment picks one with its args
# (`services.auth`, `services.vault`, `services.cache`, `services.llm`).
# It also carries the gateway's descriptor set at /app/deploy/envoy/empire.pb,
# which the gateway's init container copies, so the two never disagree.

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app

# Dependencies first: this layer is rebuilt only when pyproject.toml changes.
COPY pyproject.toml ./
RUN pip install .

# The same protoc invocations as `make proto`. The descriptor set also carries
# google.rpc's error details, so the gateway can render an error's ErrorInfo
# and BadRequest as JSON for REST callers.
COPY protos ./protos
RUN PROTOS="$(find protos -name '*.proto')" \
 && SITE="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && mkdir -p deploy/envoy \
 && python -m grpc_tools.protoc -Iprotos -I"$SITE" \
      --python_out=. --grpc_python_out=. $PROTOS \
 && python -m grpc_tools.protoc -Iprotos -I"$SITE" \
      --include_imports --include_source_info \
      --descriptor_set_out=deploy/envoy/empire.pb \
      $PROTOS google/rpc/error_details.proto google/rpc/status.proto

FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 empire \
 && useradd --system --uid 10001 --gid empire --no-create-home --shell /usr/sbin/nologin empire
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --from=build /app/empire ./empire
COPY --from=build /app/deploy/envoy/empire.pb ./deploy/envoy/empire.pb
COPY shared ./shared
COPY services ./services

# The root filesystem is read-only in the cluster: no bytecode cache, and
# logs go to stdout unbuffered.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    EMPIRE_HOST=0.0.0.0
USER 10001:10001
EXPOSE 50051 50052 50053 50054 8051 8052 8053 8054
ENTRYPOINT ["python", "-m"]
CMD ["services.auth"]
