"""Module setup for tests of tiny models: torch on one thread.

Use: `from single_thread import setup_module, teardown_module` in a test module.

Tiny matmuls run faster on one thread, and a 2-core box shared with other test processes makes
multi-threaded ones wait on each other (10-50x slower).
"""

import torch

_saved: list[int] = []


def setup_module():
    _saved.append(torch.get_num_threads())
    torch.set_num_threads(1)


def teardown_module():
    torch.set_num_threads(_saved.pop())
