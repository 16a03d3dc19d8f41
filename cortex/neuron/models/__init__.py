"""Decoders by HF `model_type` and their loaders.

model_config.py (config.json -> ModelConfig), llama.py (the decoder), attention.py and rope.py
(its layers), architectures.py (model_type -> class), dtypes.py, checkpoint.py (safetensors),
gguf.py / gguf_file.py / dequant.py (GGUF), loading.py (`load_model`, the one entry point).
"""
