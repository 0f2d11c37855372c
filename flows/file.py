"""`python -m bytewax.run flows.file:flow` — the file pipeline under Bytewax's own runner.

Configured by the environment (the same settings `learnstream run` takes as flags):

- `LEARNSTREAM_SOURCE=file:PATH[,PATH...]` (required), `LEARNSTREAM_OUT=DIR` (required)
- `LEARNSTREAM_PSEUDONYM_KEY` (required), `LEARNSTREAM_CONFIG=FILE` (optional thresholds)
- `LEARNSTREAM_RUN_ID` (optional; give every worker process of one cluster the same id)
- any threshold as `LEARNSTREAM_<NAME>` (see learnstream/config.py)

Workers `-w`, cluster `-i/-a`, recovery `-r` and the snapshot interval `-s` are bytewax.run's flags.
"""

from flows.environment import flow_from_env

flow = flow_from_env("file")
