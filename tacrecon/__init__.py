"""tacrecon: find and remove backdoors in image classifiers using clean data only."""

from tacrecon.errors import TacreconError

__version__ = "0.1.0"
__all__ = ["TacreconError", "__version__"]
