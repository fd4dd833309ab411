# The pipeline's stages as one image; docker-compose.kafka.yml runs one container per stage.
# (No Docker engine runs on the machines this is built on: this file is checked by tests, not built.)
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 LOG_JSON=true
# The CPU build of torch: the default wheel from PyPI brings gigabytes of CUDA libraries.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0

WORKDIR /app
COPY pyproject.toml README.md ./
COPY opsinfra opsinfra
COPY trading trading
COPY pipeline pipeline
COPY schemas schemas
COPY connectors connectors
COPY streams streams
COPY sinks sinks
COPY db db
COPY data data
RUN pip install '.[msk]' && pip check

RUN useradd --system --create-home ops
USER ops
ENV PIPELINE_DATA_DIR=/home/ops/.ops-pipeline
ENTRYPOINT ["ops-pipeline"]
CMD ["run"]
