"""Reading dataset files: IDX, ``.npz`` and (never trusted) pickles, and the checks they share."""
