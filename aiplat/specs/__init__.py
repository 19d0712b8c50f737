"""Model specs: one declarative file per model (models/<name>.yaml), validated on load.

A product team onboards a model by writing one file; the platform builds its whole chain from it
(assets/model_lifecycle.py). No Dagster here: the CLI, the factory and the tests share this.
"""

from aiplat.specs.model import ModelSpec
from aiplat.specs.load import SpecError, find_spec, load_spec, load_specs, spec_owners

__all__ = ["ModelSpec", "SpecError", "find_spec", "load_spec", "load_specs", "spec_owners"]
