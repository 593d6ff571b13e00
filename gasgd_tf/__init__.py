"""gasgd_tf: asynchronous SGD for Keras models through a gRPC parameter service.

Importing the package is cheap and imports no TensorFlow; the worker and
evaluator modules import it themselves.
"""

__version__ = "0.1.0"
