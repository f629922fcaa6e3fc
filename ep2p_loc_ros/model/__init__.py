"""The EP2P-Loc network (image and point encoders, matching heads), its losses, training and export."""
