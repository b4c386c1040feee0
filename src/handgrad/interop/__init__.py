"""Bridges to other libraries: :mod:`.torch` turns handgrad modules into PyTorch ones and back."""
