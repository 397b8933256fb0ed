"""Cello's KFP components: one module per stage, each a lightweight Python component whose body
only calls `cello.pipeline` (no stage logic here). `base_image` is the Cello image the stage
needs (`cello.k8s.images`: CELLO_IMAGE_REGISTRY / CELLO_IMAGE_<KEY> override it when the
pipeline is compiled); the images carry kfp, so `install_kfp_package=False`.

Checkpoints and data travel between steps as URIs (paths on the shared volume); metrics,
reports, decisions and plots are KFP artifacts the UI shows.
"""
