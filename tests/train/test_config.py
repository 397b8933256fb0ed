"""The training configs: the paper's defaults, params.yaml in step with them, the local profile."""

from __future__ import annotations

import pytest

from cello.config import GRPOStageConfig, Params, SFTStageConfig, load_params
from cello.errors import ConfigError
from tests.conftest import REPO


def test_defaults_are_the_papers():
    sft, grpo = SFTStageConfig(), GRPOStageConfig()
    assert sft.model == "Qwen/Qwen2.5-7B-Instruct"
    assert (sft.lora.r, sft.lora.alpha, sft.lora.dropout, sft.lora.target_modules) == (256, 512, 0.05, "all-linear")
    assert (sft.learning_rate, sft.epochs, sft.max_length, sft.effective_batch_size) == (5e-5, 1, 4096, 96)
    assert sft.assistant_only_loss and sft.report_to == ["tensorboard"]
    assert (grpo.num_generations, grpo.learning_rate, grpo.beta, grpo.max_completion_length, grpo.prompts_per_step) == (5, 1e-6, 0.001, 3000, 64)
    assert not grpo.lora.enabled and grpo.max_n is None and grpo.format_weight == 0.0


def test_params_yaml_matches_the_defaults_and_local_profile_loads():
    p = load_params(REPO / "params.yaml")
    assert p.train == Params().train  # params.yaml writes the defaults out, nothing drifts
    local = load_params(REPO / "params.yaml", profile="local").train
    assert local.sft.lora.modules_to_save == ["embed_tokens"] and local.grpo.max_n is not None


def test_trl_pass_through_cannot_shadow_cello_fields():
    with pytest.raises(ValueError, match=r"\['num_generations'\] are set by Cello's own fields"):
        GRPOStageConfig(trl={"num_generations": 4})
    assert SFTStageConfig(trl={"warmup_ratio": 0.03}).trl == {"warmup_ratio": 0.03}


def test_unknown_trl_key_is_named(tmp_path, tiny_model_dir, records):
    from cello.train.sft import build_sft_trainer
    from tests.train.conftest import sft_cfg

    with pytest.raises(ConfigError, match=r"\['warmup_ration'\] are not SFTConfig fields"):
        build_sft_trainer(records["sft"], tmp_path, cfg=sft_cfg(tiny_model_dir, trl={"warmup_ration": 0.1}))


def test_dora_adapter(tmp_path, tiny_model_dir, records):
    from cello.train.sft import build_sft_trainer
    from tests.train.conftest import sft_cfg

    cfg = sft_cfg(tiny_model_dir, lora={"r": 4, "alpha": 8, "dropout": 0.0, "use_dora": True})
    trainer = build_sft_trainer(records["sft"], tmp_path, cfg=cfg)
    assert any("lora_magnitude_vector" in name for name, _ in trainer.model.named_parameters())
