"""The embedding server: dynamic batching behind OpenAI- and TEI-compatible APIs."""
