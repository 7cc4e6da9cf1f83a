"""Registers emanet's config schemas (emanet/config_schema.py) in Hydra's ConfigStore.

Hydra imports every module under the ``hydra_plugins`` namespace before it composes a
config, so the schemas the config groups build on (``defaults: [_schema, _self_]``) are
there for ``train.py``, the console scripts, and any ``hydra.compose`` call alike.
"""

from emanet.config_schema import register_schemas

register_schemas()
