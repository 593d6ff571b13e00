"""gasgd_tf: asynchronous SGD for Keras models through a gRPC parameter service.

Importing the package is cheap and imports no TensorFlow; the worker and
evaluator modules import it themselves, and so does ``gasgd_tf.AsyncSGD``
(the Keras callback of ``gasgd_tf.keras_api``) on first access.
"""

__version__ = "0.1.0"

# Loaded on first access (PEP 562), so that the server needs no TensorFlow.
_LAZY = {"AsyncSGD": "gasgd_tf.keras_api", "ModelMismatchError": "gasgd_tf.keras_api"}

__all__ = ["AsyncSGD", "ModelMismatchError", "__version__"]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gasgd_tf' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
