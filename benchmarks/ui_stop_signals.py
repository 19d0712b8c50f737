"""Under a launcher's ignored SIGINT/SIGTERM (as this CI's): time the test helper DagsterDev.stop()
with the test servers' default stop signals, and without them (default_signals replaced by a no-op).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/ui_stop_signals.py with
    PYTHONPATH=$PWD .venv/bin/python benchmarks/ui_stop_signals.py without

Measured 2026-12-03: 1.7 s with, 60.0 s without (the helper's kill after its 60 s timeout).
"""
import signal, sys, tempfile, time
from pathlib import Path
signal.signal(signal.SIGINT, signal.SIG_IGN); signal.signal(signal.SIGTERM, signal.SIG_IGN)
import tests.dagster_ui as ui
if sys.argv[1] == "without":
    ui.default_signals = lambda: None
home = Path(tempfile.mkdtemp()) / "dagster_home"
d = ui.DagsterDev(home, env={"AIPLAT_STATE_DIR": str(home.parent / "state")})
d.start()
t = time.perf_counter(); d.stop(); print(sys.argv[1], f"stop took {time.perf_counter() - t:.1f} s", flush=True)
