"""addrop: AD-DROP (attribution-driven dropout, NeurIPS 2022) for Hugging Face transformers.

The library entry points::

    from addrop_cli import ADDrop, ADDropConfig, epoch_phase
"""

from addrop_cli.config import ADDropConfig
from addrop_cli.regularizer import ADDrop, epoch_phase

__version__ = "0.1.0"
__all__ = ["ADDrop", "ADDropConfig", "__version__", "epoch_phase"]
