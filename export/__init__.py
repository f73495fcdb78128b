"""mindref.export: the serving side of MIND (ONNX user tower, onnxruntime, Annoy retrieval).

Installed as the subpackage `mindref.export` (pyproject.toml, [tool.setuptools.package-dir]).
Its modules need the `export` extra: pip install "mindref[export]".
"""
