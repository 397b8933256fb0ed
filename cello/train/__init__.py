"""Training stages of the Cell-o1 recipe: distill traces -> SFT (LoRA) -> merge -> GRPO.

    from cello.train.sft import run_sft          # cello train sft
    from cello.train.merge import merge_adapter  # cello train merge
    from cello.train.grpo import run_grpo        # cello train grpo
    from cello.train.distill import distill      # cello train distill

Importing this package imports no torch, transformers or TRL; each stage imports them when run.
"""
