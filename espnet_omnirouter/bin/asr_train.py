"""ESPnet's ``asr_train`` with the plugin registered.

Use ``python -m espnet_omnirouter.bin.asr_train`` (not a wrapper around espnet2's module):
spawned DDP workers re-import this main module, and with it the registration.
"""
import espnet_omnirouter  # noqa: F401  (registers the encoders and model)
from espnet2.bin.asr_train import main

if __name__ == "__main__":
    main()
