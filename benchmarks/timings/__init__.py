"""Speed and memory: throughput, stages, conv_impl, host_memory, scaling (and their helpers)."""
