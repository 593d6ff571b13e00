"""The committed gRPC stubs match protos/ (regenerate with `make protos`)."""

import subprocess
import sys

from conftest import REPO_ROOT


def test_generated_stubs_are_up_to_date():
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "protos" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_stubs_import_without_tensorflow():
    code = (
        "import sys\n"
        "from gasgd_tf.proto import parameter_service_pb2, parameter_service_pb2_grpc\n"
        "import gasgd_tf.client, gasgd_tf.server, gasgd_tf.launch, gasgd_tf.config_base\n"
        "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
