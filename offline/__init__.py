"""Offline scoring: `tlserve score` labels a file of texts with a served model's own `Scorer`.

The same bundle, preprocessing and onnxruntime graph as `tlserve serve`, so a backlog scored
here gets the answers the server would give; it never starts a server and never imports
TensorFlow.
"""
