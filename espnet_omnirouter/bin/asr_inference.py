"""ESPnet's ``asr_inference`` with the plugin registered."""
import espnet_omnirouter  # noqa: F401  (registers the encoders and model)
from espnet2.bin.asr_inference import main

if __name__ == "__main__":
    main()
