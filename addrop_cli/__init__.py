"""addrop: AD-DROP (attribution-driven dropout, NeurIPS 2022) for Hugging Face transformers."""

__version__ = "0.1.0"
