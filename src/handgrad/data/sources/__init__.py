"""Where datasets come from: the named registry, downloads, the embedded MNIST sample, a path."""
