"""What the tools share: building models from configs, the paper's numbers,
timing and memory, the official code, the attention probes and the plot style."""
