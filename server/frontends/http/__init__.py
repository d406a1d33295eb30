"""The HTTP front ends: the JSON mirror of tlserve.v1, the Open Inference Protocol's REST binding, the page."""
