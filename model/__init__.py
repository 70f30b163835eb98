"""Detectors behind one interface (``model.detector``: ``Detector``, families chosen by name,
``load_detector``), the YOLO family (``model.yolo``: dataset writing, training, prediction), device choice and
a versioned checkpoint registry.

Submodules are imported on demand; importing ``model`` loads neither torch nor ultralytics.
"""
