"""The RAG server: ingest documents into Milvus, retrieve, and generate grounded answers."""
