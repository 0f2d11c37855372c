# learnstream worker image (users run it with docker compose; CI has no Docker engine).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY learnstream ./learnstream
COPY schemas ./schemas
COPY operators ./operators
COPY flows ./flows
COPY sinks ./sinks
COPY sources ./sources
RUN pip install --no-cache-dir .
ENTRYPOINT []
CMD ["learnstream", "--help"]
