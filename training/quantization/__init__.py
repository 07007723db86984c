"""Quantization-aware fine-tuning for the int8 engine: the dynamic-range arithmetic simulated in
Keras (fake_quant), and a fine-tune that teaches the int8 weights to answer as the float32 model
does (distill)."""
