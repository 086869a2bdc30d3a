"""lm-eval's `squadv2` and `humaneval` as tasks that run with no hub at all.

lm-eval 0.4.13's own versions compute their metrics through `evaluate.load("squad_v2")` and
`evaluate.load("code_eval")`, which download the metric scripts from the hub (humaneval's
utils.py does so on import): offline, neither task even loads. These keep lm-eval's prompts,
requests, generation settings and filters (SQuAD2 is subclassed, humaneval's YAML is the stock
one) and compute the same numbers locally: squad_v2.py ports the official SQuAD 2.0 evaluation
script that the `squad_v2` metric wraps, code_eval.py runs each program as the `code_eval`
metric does. They are indexed over the stock tasks under the same names (tasks.task_manager).
"""

from pathlib import Path

FOLDER = Path(__file__).resolve().parent
