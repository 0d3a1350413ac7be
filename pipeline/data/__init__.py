"""Data: storage, annotations, decoding, sampling, transforms, the synthetic dataset and the Ray Data clip stream."""
