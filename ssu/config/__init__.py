"""Configuration: the run's schema (:mod:`.schema`) and the one way every config is read (:mod:`.loader`).

A run's settings are one :class:`RunConfig`; ``ssu init`` resolves defaults <- an
optional YAML file <- ``--set key=value`` overrides and stores the result in
``RUN_DIR/config.json``, so a run can be reproduced from its directory alone. One schema
system for every config -- run, compare, memorize: :func:`load` (OmegaConf structured
configs). This package imports no registry.
"""

from ssu.config.loader import ComponentSpec, as_dict, build, dumps, load, load_yaml, merge, normalize, parse_set
from ssu.config.schema import (
    ALL_LINEAR,
    FINETUNES,
    CalibrateSettings,
    EvalSettings,
    GenericSettings,
    LoraSettings,
    RunConfig,
    TrainSettings,
)

__all__ = ["ALL_LINEAR", "FINETUNES", "CalibrateSettings", "ComponentSpec", "EvalSettings", "GenericSettings",
           "LoraSettings", "RunConfig", "TrainSettings", "as_dict", "build", "dumps", "load", "load_yaml", "merge",
           "normalize", "parse_set"]
