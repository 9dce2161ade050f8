"""Writing restored tensors out of TensorFlow's format: an exact ``.npz`` encoding
(:mod:`.npz`) and streaming conversion to safetensors (:mod:`.to_safetensors`)."""
