"""Decoders by HF `model_type` and their loaders.

model_config.py (config.json -> ModelConfig), llama.py (the Llama-family decoder and the layers
the others share), qwen3_moe.py, gemma.py (gemma2, gemma3_text), phi3.py (one file per family),
attention.py and rope.py (paged attention, RoPE variants), architectures.py (model_type ->
class), dtypes.py, checkpoint.py (safetensors), gguf.py / gguf_file.py / dequant.py (GGUF),
loading.py (`load_model`, the one entry point).
"""
