# The DLC's ENTRYPOINT script, verbatim (aws-neuron/deep-learning-containers common/vllm_entrypoint.py at 2.32.0).
import subprocess
import sys

subprocess.check_call(sys.argv[1:])
