"""tacrecon: find and remove backdoors in image classifiers using clean data only.

``scan``, ``repair`` and ``defend`` work on any classifier ``nn.Module`` and clean tensors
(:mod:`tacrecon.api`); the command line (``tacrecon --help``) works on files.
"""

from tacrecon.api import defend, repair, scan
from tacrecon.errors import TacreconError
from tacrecon.tac.detect import ScanResult

__version__ = "0.1.0"
__all__ = ["ScanResult", "TacreconError", "__version__", "defend", "repair", "scan"]
