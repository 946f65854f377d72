"""Deep clustering estimators on 2-D features."""

__all__: list[str] = []
