# The tlserve server image: the server and tracing extras (onnxruntime, grpcio, aiohttp, numpy,
# OpenTelemetry), no TensorFlow,
# no compilers, running as a non-root user.
#   docker build -f docker/server.Dockerfile --build-arg BASE_IMAGE=python:3.11-slim -t tlserve-server .
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
WORKDIR /src
RUN python -m venv /opt/tlserve
# Dependencies first, in their own layer: a code change does not reinstall them.
COPY constraints.txt pyproject.toml docker/requirements.py ./
RUN python requirements.py pyproject.toml server tracing > requirements.txt \
 && /opt/tlserve/bin/pip install --no-cache-dir --disable-pip-version-check -q -c constraints.txt -r requirements.txt
COPY README.md ./
COPY tlserve ./tlserve
COPY server ./server
COPY trainer ./trainer
COPY client ./client
COPY bench ./bench
COPY offline ./offline
RUN /opt/tlserve/bin/pip install --no-cache-dir --disable-pip-version-check -q --no-deps '.[server,tracing]' \
 && find /opt/tlserve -name '__pycache__' -prune -exec rm -rf {} + \
 && rm -rf /opt/tlserve/lib/python3*/site-packages/pip /opt/tlserve/bin/pip*

FROM ${BASE_IMAGE}
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin tlserve \
 && mkdir -p /models && chown tlserve /models
COPY --from=build /opt/tlserve /opt/tlserve
ENV PATH=/opt/tlserve/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    TLSERVE_REPOSITORY=/models \
    TLSERVE_HOST=0.0.0.0 \
    TLSERVE_PORT=50051 \
    TLSERVE_HTTP_PORT=8080 \
    TLSERVE_METRICS_HOST=0.0.0.0 \
    TLSERVE_METRICS_PORT=9090
USER tlserve
EXPOSE 50051 8080 9090
# The probe speaks grpc.health.v1 through tlserve's own client: healthy only when SERVING,
# i.e. after every model is loaded and warmed.
HEALTHCHECK --interval=5s --timeout=4s --start-period=30s --retries=3 \
  CMD ["tlserve", "health", "--target", "127.0.0.1:50051", "--timeout", "3"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["tlserve", "serve"]
