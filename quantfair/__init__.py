"""quantfair: audit what weight quantization does to a language model, language by language."""

__version__ = "0.1.0"
