"""Sample-world generator: realistic, reproducible source data for demos, tests and benchmarks.

See ``lifecycle/sample/README.md`` for the generative model and every parameter.
"""

from lifecycle.sample.world import (
    GENERATOR_VERSION,
    WorldConfig,
    WorldSummary,
    generate_world,
)

__all__ = ["GENERATOR_VERSION", "WorldConfig", "WorldSummary", "generate_world"]
