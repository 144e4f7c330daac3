"""TAC, the method: the scan (:mod:`~tacrecon.tac.detect`), the pruning (:mod:`~tacrecon.tac.prune`),
the stand-in triggers (:mod:`~tacrecon.tac.stand_in`) and the repair's parts
(:mod:`~tacrecon.tac.repair`); their hyperparameters in :mod:`~tacrecon.tac.config`. The estimator
that runs them is :class:`tacrecon.defenses.tac.TAC`."""

from tacrecon.tac.config import DetectionConfig, PriorConfig, PruneConfig, RobustLookConfig, StandInConfig
from tacrecon.tac.detect import Detection, Look, ScanResult, scan

__all__ = ["Detection", "DetectionConfig", "Look", "PriorConfig", "PruneConfig", "RobustLookConfig", "ScanResult",
           "StandInConfig", "scan"]
