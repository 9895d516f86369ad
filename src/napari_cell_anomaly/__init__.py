"""Find abnormal cells in microscopy images with an autoencoder and a latent density model."""

import os as _os

#: Set this environment variable to ``1`` to keep the package from setting ``OMP_WAIT_POLICY``.
KEEP_OMP_ENV = "NAPARI_CELL_ANOMALY_KEEP_OMP"

# OpenMP threads that spin while waiting make torch up to 9x slower when anything else wants
# the cores (napari's GUI thread, a second job): measured on 2 cores, 27 vs 237 training
# images/s under load, and within 4% of each other on an idle machine. So, unless told
# otherwise, the package asks OpenMP to let idle threads sleep (OMP_WAIT_POLICY=PASSIVE). This
# is process-wide and only takes effect if set before torch is first imported; a value the
# user already set is never changed, and NAPARI_CELL_ANOMALY_KEEP_OMP=1 turns the default off.
if _os.environ.get(KEEP_OMP_ENV, "").strip().lower() not in ("1", "true", "yes"):
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
