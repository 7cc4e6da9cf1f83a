"""Config keys renamed since earlier versions: a run's config.yaml written before is read
with the new names (by the command line and by :class:`emanet.Segmenter` alike), and the old
name on a command line is answered with the new one (:mod:`emanet.config_keys`)."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf, open_dict

RENAMED_KEYS = {"dataset.ignore_background": "dataset.reduce_zero_label"}


def rename_old_keys(cfg: DictConfig) -> None:
    """Give the keys of :data:`RENAMED_KEYS` their new names in ``cfg`` (a run's config.yaml
    written before the renaming), keeping their values."""
    for old, new in RENAMED_KEYS.items():
        parent, _, leaf = old.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if isinstance(node, DictConfig) and leaf in node:
            with open_dict(node):
                value = node.pop(leaf)
            OmegaConf.update(cfg, new, value, force_add=True)
