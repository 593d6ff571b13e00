"""Experiment 5: low-communication training (the DiLoCo family) against Downpour.

Four ways to train the offline digits with shifts (the setting of exp1-4,
gasgd_tf/experiments/settings.py, but 400 steps per client), each with H
local steps between syncs (H = n_sync):

  downpour      today's A-SGD: gradient pushes, one server update per push
                (server SGD 0.1, no momentum);
  rounds        the same gradient pushes in synchronous rounds
                (ps.aggregation=round; H = 1 is synchronous SGD);
  diloco        recipes.diloco: H inner AdamW steps, delta pushes, rounds,
                outer Nesterov SGD (lr 0.7, momentum 0.9);
  async_diloco  recipes.async_diloco: no rounds, Delayed Nesterov and
                adaptive H (DyLU; H is the fastest worker's).

One sweep of four parts, run in this order (``--experiment=exp5`` runs them
all; a part's cells are prefixed with its name, the grid's are not):

  hetero        4 clients, H = 50, worker 3 EMULATED slower
                (worker.step_delay_secs, SLOW_STEP_DELAY_SECS), async DiLoCo
                with adaptive and with fixed H side by side, seeds 0 and 1;
  grid, grid1   every method x H {1, 50, 200} x clients {1, 4, 8}, seed 0
                only (rounds with 1 client is Downpour with 1 client, left
                out): one seed, not three, because three would not fit in
                an hour on this shared machine;
  mnist5k       Downpour and DiLoCo, 4 clients, H {1, 50}, on mnist5k
                (28x28 MNIST, 300 steps per client), seed 0.

Every cell reports steps per client to the target test error, the bytes
its clients sent and received by then (counted in the client: the payload
streams, ParameterClient.bytes_sent / bytes_received; the workers' mean),
and the final test error; plots/ (the grid), plots/hetero/ and
plots/mnist5k/ have test error against steps per client and against bytes.

Command:   python -m gasgd_tf.experiments.run --experiment=exp5
Smoke:     python -m gasgd_tf.experiments.run --experiment=exp5 --config.smoke=True
           (one 30-step cell per method and part, 11 cells: 8 minutes on
           the shared machine here, almost all of it TensorFlow starting)
Output:    runs/exp5/{[<part>_]<method>_clients*_nsync*_seed*/, summary.md,
           summary*.csv, plots/[<part>/]*.png}
Expected:  (EXPERIMENTS.md, "Experiment 5"; seed 0) steps per client to 0.1
           test error with 4 clients: Downpour at H = 1 about 235 with 284 MB
           sent + received per client by then, DiLoCo at H = 50 about 150
           with 4.4 MB (65x fewer); mnist5k 185 (2.4 GB) against 50 (22 MB);
           Downpour and rounds at H >= 50 end at 0.19-0.84; async DiLoCo
           behind DiLoCo with 4 and 8 clients. Slow worker (emulated, 2.3x
           measured): adaptive H 96 s to 0.1, fixed H 87 s (not faster).
Runtime:   58 minutes on 2 CPU cores shared with other jobs (41 runs, 4 at a
           time; most of each run is TensorFlow starting in every process).
"""

import copy

from gasgd_tf import recipes
from gasgd_tf.experiments import settings

# Worker 3's emulated extra seconds per step. A digits CNN step takes a few
# ms on an idle core, but about 0.11 s per worker when 3 cells of 4 workers
# share these 2 cores with other jobs (measured: 280 images/s of batch 32
# per worker); 0.04 s made worker 3 only 1.2x slower there. 0.25 s makes it
# about 3x slower under that load (summary.csv: speed_ratio, measured).
SLOW_STEP_DELAY_SECS = 0.25


def changes(before: dict, after: dict) -> dict:
    """The fields of ``after`` that differ from ``before``, nested as the config nests them."""
    out = {}
    for key, value in after.items():
        if isinstance(value, dict):
            inner = changes(before.get(key, {}), value)
            if inner:
                out[key] = inner
        elif before.get(key) != value:
            out[key] = value
    return out


def recipe_changes(recipe, **args) -> dict:
    """What ``recipe`` (gasgd_tf.recipes) changes in this setting; H is the grid's n_sync."""
    base = settings.experiment_config().to_dict()
    changed = recipe(settings.experiment_config(), **args).to_dict()
    out = changes(base, changed)
    out.pop("n_sync", None)
    return out


def methods() -> dict:
    """The four methods, as sweep variants (config changes)."""
    return {
        "downpour": {},
        "rounds": {"ps": {"aggregation": "round"}},
        "diloco": recipe_changes(recipes.diloco),
        "async_diloco": recipe_changes(recipes.async_diloco),
    }


def get_config():
    config = settings.experiment_config()
    config.name = "exp5"
    # 400 steps per client (exp1-4: 800) and evaluations every 0.5 s: the
    # runs must fit in about an hour on 2 shared cores.
    config.num_steps = 400
    config.eval.every_secs = 0.5
    config.sweep.clients = (1, 4, 8)
    config.sweep.n_sync = (1, 50, 200)
    config.sweep.seeds = (0,)
    config.sweep.variants = methods()
    fixed = copy.deepcopy(methods()["async_diloco"])
    fixed["worker"]["local_steps"] = "fixed"
    # They run by `order`: the emulated slow worker first. Rounds with 1
    # client are Downpour with 1 client (a round of one push), so the
    # grid's 1-client part leaves them out; mnist5k runs the two methods
    # the first target compares.
    targets = {k: v for k, v in methods().items() if k in ("downpour", "diloco")}
    one_client = {k: v for k, v in methods().items() if k != "rounds"}
    config.sweep.parts = {
        "hetero": {
            "clients": (4,),
            "n_sync": (50,),
            "seeds": (0, 1),
            "order": -1,
            "changes": {"worker": {"step_delay_secs": (0.0, 0.0, 0.0, SLOW_STEP_DELAY_SECS)}},
            "variants": {"adaptive": methods()["async_diloco"], "fixed": fixed},
        },
        "grid": {"label": "", "clients": (4, 8)},
        "grid1": {"label": "", "clients": (1,), "variants": one_client},
        "mnist5k": {
            "clients": (4,),
            "n_sync": (1, 50),
            "changes": {"data": {"name": "mnist5k"}, "num_steps": 300},
            "variants": targets,
        },
    }
    config.sweep.concurrency = 4  # The machine is shared: more cells at once get more of it.
    config.sweep.smoke_values = 1  # A smoke run: the smallest clients and H of each part.
    config.sweep.target_error = 0.1
    return config
