"""A fitted run applied beyond the test split: new image files (``inference``: what ``msacl predict`` and
``msacl serve`` run) and one exported graph (``export``: ONNX / TorchScript, checked against the detector)."""
