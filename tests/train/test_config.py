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
    assert (grpo.num_generations, grpo.learning_rate, grpo.beta, grpo.max_completion_length, grpo.prompts_per_step) == (
        5,
        1e-6,
        0.001,
        3000,
        64,
    )
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


@pytest.mark.parametrize("key", ["save_strategy", "data_seed", "dataset_num_proc", "activation_checkpointing"])
def test_trl_cannot_override_what_cello_sets_regression(key):
    # trl: {save_strategy: "no"} used to pass validation and silently disable checkpoints
    with pytest.raises(ValueError, match=rf"\['{key}'\] are set by Cello's own fields"):
        SFTStageConfig(trl={key: "no"})


def _owned(monkeypatch, build) -> tuple[set, frozenset]:
    """The TRL arguments a trainer builder sets itself, captured at trl_config."""
    import cello.train.common as common

    seen = {}
    real = common.trl_config

    def spy(cls, owned, extra, *, section, reserved):
        seen.update(owned=set(owned), reserved=reserved)
        return real(cls, owned, extra, section=section, reserved=reserved)

    monkeypatch.setattr(common, "trl_config", spy)
    build()
    return seen["owned"], seen["reserved"]


def test_owned_keys_are_exactly_what_the_trainers_set(monkeypatch, tmp_path, tiny_model_dir, records):
    from cello.train.grpo import grpo_args
    from cello.train.sft import build_sft_trainer
    from tests.train.conftest import sft_cfg

    settings = {"bf16": False, "fp16": False, "use_cpu": True}
    renamed = {"gradient_checkpointing_kwargs", "activation_checkpointing", "activation_checkpointing_kwargs"}
    grpo = GRPOStageConfig(model=str(tiny_model_dir), vllm_server="http://vllm:8000")
    owned, reserved = _owned(monkeypatch, lambda: grpo_args(tmp_path, cfg=grpo, world_size=1, settings=settings))
    # reserved beyond what is set: the renamed checkpointing spellings, deepspeed (set only with a
    # DeepSpeed config, a GPU extra), and generation_batch_size (TRL forbids it next to
    # steps_per_generation, which Cello sets)
    assert reserved - owned == renamed | {"deepspeed", "generation_batch_size"}
    owned, reserved = _owned(
        monkeypatch, lambda: build_sft_trainer(records["sft"], tmp_path / "s", cfg=sft_cfg(tiny_model_dir))
    )
    assert reserved - owned == renamed | {"deepspeed"}


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


def test_a_params_file_given_but_missing_is_an_error_regression(tmp_path, monkeypatch, caplog, capsys):
    # `--params typo.yaml` used to fall back to the built-in defaults and start a 7B run
    from cello.cli import main

    with pytest.raises(ConfigError, match="typo.yaml: no such params file"):
        load_params(tmp_path / "typo.yaml")
    assert (
        main(["train", "sft", str(tmp_path), "-o", str(tmp_path / "out"), "--params", str(tmp_path / "typo.yaml")]) == 2
    )
    assert "typo.yaml: no such params file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    monkeypatch.chdir(tmp_path)  # no params.yaml here: the implicit default may be absent, and says so
    with caplog.at_level("INFO", logger="cello.config"):
        assert load_params().train.sft.model == "Qwen/Qwen2.5-7B-Instruct"
    assert "using the built-in defaults" in caplog.text
