"""What the pipeline's components call: one entry function per stage, plus compile/run/submit.

The KFP components in `components/` are thin: each calls one function here and turns its
result into KFP outputs. Everything a stage needs travels as plain strings: a run folder
(`run_dir`, holding the run's resolved params.yaml and lineage.json) and URIs of data and
checkpoints on the shared volume. Metrics, reports and plots are the only KFP artifacts.

    cello.pipeline.data      the source at a revision, DVC data (fan-out over input files)
    cello.pipeline.train     base model, distill, SFT, merge, GRPO (backend: local | kubernetes)
    cello.pipeline.evaluate  candidate / incumbent / baseline evaluation, the promotion gate
    cello.pipeline.deploy    local smoke deployment or KServe, and the exit handler's cleanup
    cello.pipeline.run       the run folder, its params and lineage (what every step shares)
    cello.pipeline.compiler  compile to IR YAML; cello.pipeline.local: run locally; .submit: to KFP

Nothing here imports kfp at module level except the compile/run/submit modules, so a step
pays only for the libraries its stage uses.
"""
