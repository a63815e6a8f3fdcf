"""The generation server: a TGI-compatible text-generation API (plus OpenAI's chat completions)
over a transformers causal LM, with continuous batching on one inference thread."""
