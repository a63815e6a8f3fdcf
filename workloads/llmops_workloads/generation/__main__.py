"""The generation server: a TGI-compatible text-generation API over a transformers causal LM."""

from .server import main

main()
