"""The protocol of one model replica with the parameter service (TF-free).

``SyncSchedule`` says what is due after a step; ``ReplicaSession`` joins,
pushes and fetches with the right base versions, recovers after a server
restart and leaves, over a direct or a background transport. The
command-line worker, the Keras callback and the evaluator are adapters over
it.
"""

from gasgd_tf.replica.payload import DeltaTracker, Update
from gasgd_tf.replica.schedule import NOTHING, Due, SyncSchedule
from gasgd_tf.replica.session import ModelMismatchError, ReplicaSession, SessionStats, Variables
from gasgd_tf.replica.transport import BackgroundTransport, DirectTransport, Outcome

__all__ = [
    "NOTHING",
    "BackgroundTransport",
    "DeltaTracker",
    "DirectTransport",
    "Due",
    "ModelMismatchError",
    "Outcome",
    "ReplicaSession",
    "SessionStats",
    "SyncSchedule",
    "Update",
    "Variables",
]
