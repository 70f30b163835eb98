"""The YOLO wrapper: device choice, dataset writing, training, prediction and a versioned checkpoint registry.

Submodules are imported on demand; importing ``model`` loads neither torch nor ultralytics.
"""
