"""Fake tensorrt_llm.logger: where upstream's log lines go (tensorrt_llm/logger.py, 1.2 line).

Upstream's `Logger` singleton logs through the logging logger "TRT-LLM" with `propagate = False`
and one `logging.StreamHandler(stream=sys.stdout)` made at import, at level warning unless
TLLM_LOG_LEVEL says otherwise; messages read "[TRT-LLM] [W] ...". build() and PretrainedConfig log
through it. A re-import (tests drop the fake from sys.modules between tests) replaces the handler
instead of adding a second one.
"""

import logging
import sys


class Logger:
    PREFIX = "TRT-LLM"

    def __init__(self):
        self._logger = logging.getLogger(self.PREFIX)
        self._logger.propagate = False
        for handler in list(self._logger.handlers):
            self._logger.removeHandler(handler)
        handler = logging.StreamHandler(stream=sys.stdout)
        handler.setFormatter(logging.Formatter(fmt="[%(asctime)s] %(message)s", datefmt="%m/%d/%Y-%H:%M:%S"))
        self._logger.addHandler(handler)
        self._logger.setLevel(logging.WARNING)

    def warning(self, msg):
        self._logger.warning(f"[{self.PREFIX}] [W] {msg}")

    def info(self, msg):
        self._logger.info(f"[{self.PREFIX}] [I] {msg}")


logger = Logger()
