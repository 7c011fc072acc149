"""msacl: self-supervised pre-training and unsupervised anomaly detection for medical images.

The package is laid out as the pipeline it implements::

    data -> augment -> pretrain -> detectors -> metrics -> report, with cli on top.

``models`` holds the encoders and heads shared by ``pretrain`` and ``detectors``.
"""

__version__ = "0.1.0"
