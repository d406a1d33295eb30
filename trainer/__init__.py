"""The trainer: vector import, labelled data, transfer training, ONNX export, reports (extra `trainer`)."""
