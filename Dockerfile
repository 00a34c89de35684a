# Serves a model bundle and a gallery index:
#   docker build -t robust-retrieval .
#   docker run -p 8000:8000 -v $PWD/bundle:/data/bundle:ro -v $PWD/index:/data/index:ro \
#     -e RR_BUNDLE=/data/bundle robust-retrieval
# Settings come from RR_* variables (RR_ENABLE_PROBE, RR_API_KEY, RR_ADMIN_KEY, RR_WORKERS, ...).

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# CPU-only torch first, from the PyTorch CPU wheel index, so the project install does not pull CUDA wheels.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch torchvision
WORKDIR /src
COPY pyproject.toml README.md ./
COPY retrieval ./retrieval
COPY training ./training
COPY serve ./serve
RUN pip install .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 app
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 RR_HOST=0.0.0.0 RR_INDEX_ROOT=/data
USER app
WORKDIR /home/app
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz')"
ENTRYPOINT ["robust-retrieval", "serve"]
CMD ["/data/index", "--host", "0.0.0.0", "--port", "8000"]
