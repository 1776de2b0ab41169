"""The restoration methods; each takes aligned faces in [0, 1] and gives restored ones."""
