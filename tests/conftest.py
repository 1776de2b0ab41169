"""The test suite never touches the network: bfr fetches weights where downloads are on (facexlib's
networks for the face pipeline, the paper tier's checkpoints), so tests switch downloads off as CI does.
A test of the download path turns it back on for itself and points the source at a local ``file:`` URL."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
