"""Raw audio in, 2-D embeddings out."""

__all__: list[str] = []
