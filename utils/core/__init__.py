"""The core: bytes in, a classified film out. Decoding, preprocessing, the engines, the guard,
the classifier, the bundle and the record. It imports none of the adapters or edges."""
