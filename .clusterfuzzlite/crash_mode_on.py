"""PyInstaller runtime hook of the ClusterFuzzLite/OSS-Fuzz build: crash mode is on unless the
environment says otherwise (PFNDIFF_CRASH=0), because such an engine only sees crashes."""

import os

os.environ.setdefault("PFNDIFF_CRASH", "1")
