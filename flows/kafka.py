"""`python -m bytewax.run flows.kafka:flow` — the live Kafka pipeline under Bytewax's own runner.

Configured by the environment: `LEARNSTREAM_BOOTSTRAP=HOST:PORT` (required), `LEARNSTREAM_OUT=DIR`
(required), `LEARNSTREAM_PSEUDONYM_KEY` (required), optional `LEARNSTREAM_EVENTS_TOPIC`,
`LEARNSTREAM_ALERTS_TOPIC`, `LEARNSTREAM_METRICS_TOPIC`, `LEARNSTREAM_DLQ_TOPIC`,
`LEARNSTREAM_KAFKA_CONFIG=FILE`, `LEARNSTREAM_CONFIG=FILE`, `LEARNSTREAM_RUN_ID`.
"""

from flows.environment import flow_from_env

flow = flow_from_env("kafka")
