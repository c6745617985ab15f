"""Speed and memory of FLatten models against their softmax counterparts (paper Fig. 7).

Modes, one file each, all timing their candidates in one process with
:mod:`scripts.core.timing` (round-robin after warm-up; the median round and the
fastest round):

* :mod:`.model_speed` (default): whole models from ``configs/*.yaml`` (FLatten)
  and ``configs/baselines/*.yaml`` (softmax), built by this project, by timm
  where timm has the model, and by the official code (``--impl official
  --official-path PATH``) with the same weights; inference or a training step
  (``--train``).
* :mod:`.breakdown` (``--breakdown``): each eager model's time split into linear
  layers, attention core and the rest.
* :mod:`.scaling` (``--resolutions``): FLatten-Swin-T against Swin-T and against
  softmax over the same global windows, per input resolution; table and plot.
* :mod:`.attention_op` (``--op``): the attention operation alone, ours against
  the official op sequence; (``--feature-map``) the focused feature map alone,
  the Triton kernel against the fused PyTorch path (CUDA).

Every printed figure carries the hardware, versions, batch, precision and mode;
``--json`` writes ``{meta, results}``, which ``scripts.plot_fig7`` reads.
Run ``python -m scripts.benchmark --help`` for the options.
"""
