"""The sentence embedder shared by the semantic cache, the trained router and the online calibration.

`model` names the weights without loading them (cheap to import); `embedder` loads and runs them
(onnxruntime, imported only there); `shared` is the one loaded copy the route policies share;
`vector_cache` keeps vectors of many texts on disk for training, replay and evaluation.
"""
