"""ai-platform: the library behind the Dagster assets and the `aiplat` CLI.

Logic that is not about orchestration lives here, in plain functions that the assets, the CLI
and the tests all call.
"""

from aiplat.config import prefer_passive_openmp

__version__ = "0.1.0"

# Before anything imports torch: see prefer_passive_openmp.
prefer_passive_openmp()
