"""The engine: continuous batching over a paged KV cache, one thread per device (nano-vllm's
layout). worker.py (`DeviceWorker`, what the server uses) -> llm_engine.py (`LLMEngine`, one model's
step loop) -> scheduler.py / block_manager.py / sequence.py (pure Python) and model_runner.py
(tensors, sampling.py, cuda_graph.py). The offline API over it is `cortex.neuron.offline`.
"""
