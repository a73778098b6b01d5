"""A small VLA-like chunk policy (``model``), its BC pretraining (``pretrain``) and adapters for real VLAs
(``adapters``). The learner algorithm is ``algos/hg_dagger_vla``."""
