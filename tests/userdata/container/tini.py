"""Stand-in for docker --init (tini): run the command as a child, forward SIGTERM/SIGINT to it, exit with its code."""
import signal
import subprocess
import sys

child = None


def forward(sig, _frame):
    if child is not None:
        child.send_signal(sig)


for s in (signal.SIGTERM, signal.SIGINT):
    signal.signal(s, forward)
child = subprocess.Popen(sys.argv[1:])
code = child.wait()
sys.exit(128 - code if code < 0 else code)
