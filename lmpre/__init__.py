"""lmpre: pretrain language models from raw text — causal LM, masked LM and span corruption."""

__version__ = "0.1.0"
