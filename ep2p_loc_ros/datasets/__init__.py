"""Readers for sources of camera + LiDAR frames; each yields the same :class:`KittiObjectFrame`-like records."""
