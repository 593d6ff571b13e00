"""The paper's experiments: sweeps over configs, their summary tables and figures."""
