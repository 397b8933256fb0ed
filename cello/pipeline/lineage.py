"""Lineage of pipeline outputs: the helpers live in `cello.lineage` (below the stages, so that
training, evaluation and the gate can name the data version too); re-exported here for the
pipeline's modules."""

from cello.lineage import RECORD_PREFIX, data_folder_version, digest, dvc_data_version, git_revision

__all__ = ["RECORD_PREFIX", "data_folder_version", "digest", "dvc_data_version", "git_revision"]
