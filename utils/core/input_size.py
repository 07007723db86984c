"""The model input's side in pixels, where the bundle and preprocessing both read it (a bundle
without an input shape in its metadata.json is taken to use it)."""

INPUT_SIZE = 384
