"""Pixels in, faces out: decoding untrusted photos, face detection (YuNet, Haar, HOG), alignment, and the
descriptors of a face crop (dlib's ResNet, pixels and wavelets). Imports only `bbt.errors` and `bbt` itself."""
