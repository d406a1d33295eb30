# The tlserve server image: the server and tracing extras (onnxruntime, grpcio, aiohttp, numpy,
# OpenTelemetry) and the compiled encoder, no TensorFlow, no compilers (the encoder is built in the
# build stage, which has one), running as a non-root user.
#   docker build -f docker/server.Dockerfile --build-arg BASE_IMAGE=python:3.11-slim -t tlserve-server .
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
WORKDIR /src
# A C compiler for the compiled encoder; Python's headers too where the base image's Python comes
# from Debian packages (the official images carry them).
RUN apt-get update -q \
 && headers=$(python -c 'import os, sysconfig; print(os.path.isfile(sysconfig.get_paths()["include"] + "/Python.h"))') \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends gcc libc6-dev \
      $([ "$headers" = True ] || echo python3-dev) >/dev/null \
 && rm -rf /var/lib/apt/lists/*
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
COPY setup.py ./
# TLSERVE_ENCODER=native: the build fails here, not at run time, if the encoder was not compiled.
RUN /opt/tlserve/bin/pip install --no-cache-dir --disable-pip-version-check -q --no-deps '.[server,tracing]' \
 && (cd / && TLSERVE_ENCODER=native /opt/tlserve/bin/python -c "import tlserve.core.encoders as e; e.chosen_encoder()") \
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
