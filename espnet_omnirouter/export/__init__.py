"""ONNX export of ESPnet ASR models: ``frontend``, ``encoder`` (sparse MoE/Duo dispatch), ``decoder``
(CTC and the attention decoder's cached step) and ``model`` (all of them and ``config.yaml``, the
directory that ``espnet_omnirouter_onnx.Speech2Text`` decodes)."""
