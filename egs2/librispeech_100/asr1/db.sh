# Where the extracted LibriSpeech corpus lives (the folder that holds train-clean-100/, dev-clean/, ...).
LIBRISPEECH=${LIBRISPEECH:-downloads/LibriSpeech}
