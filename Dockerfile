# learnstream worker image, used by docker-compose.yml (Docker does not run in CI; the
# compose file and this Dockerfile are checked by tests/test_compose.py).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# pyproject.toml names README.md as the long description: both are needed to build
COPY pyproject.toml README.md ./
# every package of pyproject's [tool.setuptools] packages
COPY learnstream ./learnstream
COPY schemas ./schemas
COPY operators ./operators
COPY flows ./flows
COPY sinks ./sinks
COPY sources ./sources
RUN pip install . && mkdir -p /data/out /data/recovery

# `docker stop` sends SIGTERM: a live run then ends its sources and commits every output
STOPSIGNAL SIGTERM
CMD ["learnstream", "--help"]
