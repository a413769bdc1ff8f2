"""Activation (DESIGN.md §8): scored customers, audiences, exports and pushes for campaign tools.

The DAG calls :func:`run_activation` after scoring; ``lifecycle export --date D`` runs the
same. See docs/activation.md for what marketers get.
"""

from lifecycle.activation.audiences import Audience, AudienceFileError, load_audiences
from lifecycle.activation.membership import control_value, is_control
from lifecycle.activation.push import PushError
from lifecycle.activation.run import ActivationResult, run_activation
from lifecycle.activation.scores import ActivationError

__all__ = [
    "ActivationError",
    "ActivationResult",
    "Audience",
    "AudienceFileError",
    "PushError",
    "control_value",
    "is_control",
    "load_audiences",
    "run_activation",
]
