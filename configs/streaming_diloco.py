"""Streaming DiLoCo (Douillard et al. 2025, arXiv 2501.18512) on the offline digits.

DiLoCo's run (configs/diloco.py: 2 workers x 500 steps, H = 50 local AdamW
steps, rounds, outer Nesterov SGD 0.7 / 0.9), but the model is cut into 4
fragments of about equal size and fragment f syncs alone at step offset
f * 50 / 4 of every 50-step period: it pushes its delta in int4 (error
feedback on the worker), and its fetch is overlapped with the next 5 local
steps, then merged half and half with the local values; parameters are
fetched in bfloat16. Each sync moves a quarter of the model, so the peak
bandwidth is 4x lower than DiLoCo's; the pushes carry 7.9x fewer bytes and
the fetches 2x fewer than float32 (3.8 MB a worker in all, DiLoCo: 12.1 MB).

Command:   python -m gasgd_tf.main --config=configs/streaming_diloco.py
Expected:  test accuracy 0.972 to 0.981 in 3 runs here (seeds 1-3), 40 fragment
           updates (BUILD_NOTES.md, "Streaming fragment sync").
Runtime:   about 30 s on 2 CPU cores without a GPU.
"""

from gasgd_tf import recipes


def get_config():
    config = recipes.streaming_diloco(recipes.default_run())
    config.name = "streaming_diloco"
    return config
