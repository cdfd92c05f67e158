"""Images in and out: datasets (bundled digits, folders, Hub datasets), the per-image transform, grids."""
