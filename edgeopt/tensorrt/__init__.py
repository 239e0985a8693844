"""TensorRT: engine builds for TensorRT 8.6-10.x (builder-flag precision) and 11.x (strongly typed
networks), engine keys, optimization profiles, the engine runtime, and ONNX Runtime's TensorRT EP road.

Nothing here imports tensorrt at module load: the pure logic (profiles, keys, Q/DQ checks, layer
precisions) runs and is tested anywhere; the builder and runtime import it when used.
"""
