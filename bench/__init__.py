"""tlserve's benchmark harness (`tlserve bench`), installed as tlserve.bench."""
