"""Switch and Omni-router Mixture-of-Experts encoders for ESPnet ASR.

Importing the package registers its encoders (``espnet_omnirouter.registry.ENCODERS``: Switch,
Omni-router and Duo Conformer, Transformer, E-Branchformer and contextual-block encoders) and
``moe_espnet`` (model) in ``espnet2.tasks.asr``, and makes a gloo DDP worker destroy its process
group at exit (``espnet_omnirouter.distributed_exit``).
"""
from espnet_omnirouter import distributed_exit
from espnet_omnirouter.registry import register

register()
distributed_exit.install()

__version__ = "0.1.0"
